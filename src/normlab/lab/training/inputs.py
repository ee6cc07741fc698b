"""The user's model and data, as ``normlab compare --model MODEL --data DATA`` names them.

MODEL: ``MODULE:FACTORY`` (``torchvision.models:resnet18``), ``FILE.py:FACTORY``, ``torchvision:NAME`` or
``timm:NAME`` (random weights: never downloaded), called with ``model_args``.
DATA: ``cifar10:DIR``, ``mnist:DIR`` (the lab's readers), ``imagefolder:DIR`` (``DIR/train`` and ``DIR/test``, a
folder per class: torchvision's ImageFolder), or ``FILE.py:FN`` returning ``(train_dataset, test_dataset)`` of
``(input, label)`` pairs, or ``(train, test, loss_fn)`` for a task other than classification (``loss_fn(output,
target)`` a scalar; a language model's next-token loss, say).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Sized
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = ["UserData", "load_model", "load_user_data", "parse_model_args", "fingerprint", "examples", "DATA_KINDS"]

DATA_KINDS = ("cifar10", "mnist", "imagefolder")


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``"num_classes=10,width=0.5"`` -> ``{"num_classes": 10, "width": 0.5}`` (values as Python literals, else
    strings)."""
    args: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--model-args must be NAME=VALUE[,NAME=VALUE...], got {item!r}")
        try:
            args[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args[key.strip()] = value.strip()
    return args


def _import(module_name: str) -> ModuleType:
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"{module_name} does not exist")
            # a .py file's spec and its loader are never None (a None would raise here, and be reported below)
            spec = cast(
                "ModuleSpec", importlib.util.spec_from_file_location(f"normlab_user_{path.stem}", path.resolve())
            )
            module = importlib.util.module_from_spec(spec)
            cast("Loader", spec.loader).exec_module(module)
            return module
        return importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as err:  # an import can fail in any way (ImportError, a RuntimeError in an extension...)
        raise ValueError(f"cannot import {module_name}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def _factory(spec: str, option: str) -> Callable[..., Any]:
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{option} must be MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    if module_name == "torchvision":
        import torchvision

        return lambda **kw: torchvision.models.get_model(name, weights=None, **kw)
    if module_name == "timm":
        import timm

        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    fn = getattr(_import(module_name), name, None)
    if not callable(fn):
        raise ValueError(f"{option} {spec}: {module_name} has no callable {name}")
    return fn


def load_model(spec: str, model_args: dict[str, Any] | None = None, option: str = "--model") -> nn.Module:
    """``spec`` (see the module docstring) called with ``model_args``; ValueError naming ``option`` unless it
    returns an ``nn.Module``."""
    fn = _factory(spec, option)
    try:
        model = fn(**(model_args or {}))
    except Exception as err:
        raise ValueError(
            f"{option} {spec}: the factory raised {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{option} {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@dataclass(frozen=True)
class UserData:
    """The user's data: training and test sets of ``(input, target)``; ``loss_fn`` None for classification
    (cross-entropy, and accuracy is measured)."""

    train: Dataset
    test: Dataset
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None

    @property
    def classification(self) -> bool:
        return self.loss_fn is None


def _image_folder(path: Path) -> UserData:
    from torchvision import datasets, transforms

    splits = {}
    for split, names in (("train", ("train",)), ("test", ("test", "val"))):
        folder = next((path / n for n in names if (path / n).is_dir()), None)
        if folder is None:
            raise ValueError(
                f"--data imagefolder:{path}: expected {path}/train and {path}/test (or val), a folder per class in each"
            )
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])
        try:
            splits[split] = datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise ValueError(f"--data imagefolder:{path}: {err}") from None
    return UserData(splits["train"], splits["test"])


def _from_file(spec: str) -> UserData:
    out = _factory(spec, "--data")()
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ValueError(
            f"--data {spec}: expected (train_dataset, test_dataset[, loss_fn]), got a {type(out).__name__}"
        )
    for name, item in zip(("train_dataset", "test_dataset"), out[:2], strict=True):
        if not (hasattr(item, "__getitem__") and hasattr(item, "__len__")):
            raise ValueError(f"--data {spec}: {name} is a {type(item).__name__}, not a map-style Dataset")
    loss_fn = out[2] if len(out) == 3 else None
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"--data {spec}: the third item must be a loss function, got {type(loss_fn).__name__}")
    return UserData(out[0], out[1], loss_fn)


@lru_cache(maxsize=4)
def load_user_data(spec: str) -> UserData:
    """The data ``spec`` names (see the module docstring); ValueError naming ``--data`` for a missing or empty
    directory, or a function that returns something else."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"--data must be KIND:PATH ({', '.join(DATA_KINDS)}) or FILE.py:FN, got {spec!r}")
    if kind not in DATA_KINDS:
        return _from_file(spec)
    path = Path(rest)
    if not path.is_dir() or not any(path.iterdir()):
        raise ValueError(f"--data {spec}: {path} is {'empty' if path.is_dir() else 'not a directory'}")
    if kind == "imagefolder":
        return _image_folder(path)
    from .data import load_images

    try:
        images = load_images(kind, str(path))
    except (OSError, ValueError) as err:
        raise ValueError(f"--data {spec}: {err}") from None
    return UserData(TensorDataset(images.x_train, images.y_train), TensorDataset(images.x_test, images.y_test))


def fingerprint(model: str, data: str) -> str:
    """A short hash of what the model and data specs point at: the model file's bytes (or the module's name and
    version), the data files' names, sizes and modification times. A run of edited inputs gets a new key."""
    digest = hashlib.sha256()
    for spec in (model, data):
        source = spec.rpartition(":")[0] if ":" in spec else spec
        kind, _, rest = spec.partition(":")
        path = Path(rest) if kind in DATA_KINDS else Path(source)
        digest.update(spec.encode() + b"\0")
        if path.is_file():
            digest.update(path.read_bytes())
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file())[:100_000]:
                stat = file.stat()
                digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:  # a module: its version, where it has one
            top = source.split(".")[0]
            version = getattr(importlib.import_module(top), "__version__", "") if top else ""
            digest.update(f"{top}={version}".encode())
    return digest.hexdigest()[:16]


def examples(dataset: Dataset, count: int) -> tuple[torch.Tensor, Any]:
    """The first ``count`` examples of ``dataset`` collated into one batch."""
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in range(min(count, len(cast(Sized, dataset))))])
