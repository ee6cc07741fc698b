"""Data sets for the lab, none downloaded at run time.

Embedded defaults: MNIST-1D (generated offline by ``mnist1d``, Greydanus 2020), scikit-learn's 8x8 digits, and the
English text CPython ships (``pydoc_data.topics``). Real loaders read CIFAR-10 (the python pickle batches) and
MNIST (idx files) from a directory given as ``--data cifar10:PATH`` or ``--data mnist:PATH``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import cast

import numpy as np
import torch

__all__ = [
    "ImageData",
    "TextData",
    "check_data",
    "load_images",
    "load_text",
    "read_cifar10",
    "read_mnist",
    "parse_data_spec",
    "training_part",
]


@dataclass(frozen=True)
class ImageData:
    """Classification data as float32 tensors ``(N, C, *spatial)``, standardized with training statistics."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def spatial_dims(self) -> int:
        return self.x_train.dim() - 2

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]


@dataclass(frozen=True)
class TextData:
    name: str
    train: torch.Tensor  # int64 character ids
    valid: torch.Tensor  # held out, for choosing (learning rates)
    test: torch.Tensor  # held out, for judging
    vocab: list[str]


def _standardized(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> ImageData:
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    mean, std = x_train.mean(), x_train.std() + 1e-8
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    return ImageData(
        name,
        to_t((x_train - mean) / std),
        to_t(np.asarray(y_train, np.int64)),
        to_t((x_test - mean) / std),
        to_t(np.asarray(y_test, np.int64)),
        num_classes,
    )


def _cache_dir() -> Path:
    path = Path(os.environ.get("NORMLAB_CACHE", Path.home() / ".cache" / "normlab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def mnist1d() -> ImageData:
    """MNIST-1D with its defaults (4000 train / 1000 test, length 40, seed 42), cached as .npz after the first call."""
    cache = _cache_dir() / "mnist1d-default.npz"
    if not cache.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        os.replace(tmp, cache)
    d = np.load(cache)
    return _standardized("mnist1d", d["x"][:, None, :], d["y"], d["x_test"][:, None, :], d["y_test"])


@cache
def digits() -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1797 images), split 1400 / 397 with a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.images[order][:, None, :, :], d.target[order]
    return _standardized("digits", x[:1400], y[:1400], x[1400:], y[1400:])


def read_cifar10(path: str | Path) -> ImageData:
    """CIFAR-10 from its python version: ``data_batch_1..5`` and ``test_batch`` pickles (dicts of b"data",
    b"labels")."""
    path = Path(path)
    train = sorted(path.glob("data_batch_*"))
    if not train or not (path / "test_batch").exists():
        raise FileNotFoundError(f"CIFAR-10: expected data_batch_* and test_batch in {path}")

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], np.int64))
        return np.concatenate(xs) / 255.0, np.concatenate(ys)

    return _standardized("cifar10", *read(train), *read([path / "test_batch"]))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        zero, dtype_code, ndim = struct.unpack(">HBB", fh.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte idx file")
        shape = struct.unpack(">" + "I" * ndim, fh.read(4 * ndim))
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(shape)


def read_mnist(path: str | Path) -> ImageData:
    """MNIST from idx files (optionally .gz): train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*."""
    path = Path(path)

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"MNIST: expected {stem}[.gz] in {path}")

    x = _read_idx(find("train-images-idx3-ubyte"))[:, None] / 255.0
    y = _read_idx(find("train-labels-idx1-ubyte"))
    xt = _read_idx(find("t10k-images-idx3-ubyte"))[:, None] / 255.0
    yt = _read_idx(find("t10k-labels-idx1-ubyte"))
    return _standardized("mnist", x, y, xt, yt)


_READERS = {"cifar10": read_cifar10, "mnist": read_mnist}


def parse_data_spec(spec: str | None) -> tuple[str, str | None]:
    """``"cifar10:/data/cifar"`` -> ``("cifar10", "/data/cifar")``; None -> the embedded defaults."""
    if spec is None:
        return "default", None
    kind, _, path = spec.partition(":")
    if kind not in _READERS or not path:
        raise ValueError(f"--data must be cifar10:PATH or mnist:PATH, got {spec!r}")
    return kind, path


def training_part(n: int, validation_fraction: float) -> int:
    """How many of ``n`` training examples a run trains on when the last ``validation_fraction`` of them (at least
    one) is held out for validation; all of them without a fraction."""
    return n - max(1, round(validation_fraction * n)) if validation_fraction else n


def check_data(spec: str | None) -> None:
    """ValueError naming the path and what was expected unless ``--data`` ``spec`` loads (read-only)."""
    kind, path = parse_data_spec(spec)
    if path is None:
        return
    expected = {
        "cifar10": "CIFAR-10's python batches (data_batch_1..5 and test_batch pickles)",
        "mnist": "MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*, optionally .gz)",
    }
    if not Path(path).is_dir():
        raise ValueError(f"--data {spec}: {path} is not a directory; expected one holding {expected[kind]}")
    try:
        data = load_images(kind, path)
    except Exception as err:  # any reader failure (missing file, bad pickle, truncated idx) is the user's data
        raise ValueError(f"--data {spec}: could not read {path} as {expected[kind]}: {err}") from None
    if len(data.x_train) == 0 or len(data.x_test) == 0:
        raise ValueError(f"--data {spec}: {path} holds no training or no test examples")


@cache
def load_images(kind: str = "mnist1d", path: str | None = None) -> ImageData:
    """The image data a study asks for: ``mnist1d`` and ``digits`` are embedded; ``cifar10``/``mnist`` need a path."""
    if kind == "mnist1d":
        return mnist1d()
    if kind == "digits":
        return digits()
    if kind in _READERS:
        return _READERS[kind](cast(str, path))  # None: Path(None) raises TypeError, as it always did
    raise ValueError(f"unknown image data {kind!r}")


@cache
def load_text(max_chars: int = 400_000) -> TextData:
    """CPython's pydoc topics (English prose about Python), as character ids; of the last 10%, the first half is
    validation (learning-rate selection) and the second half test (verdicts)."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))[:max_chars]
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    split, half = int(len(ids) * 0.9), int(len(ids) * 0.95)
    return TextData("pydoc-topics", ids[:split], ids[split:half], ids[half:], vocab)
