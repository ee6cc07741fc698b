"""Real loaders on small files in the real formats, and the embedded data sets."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from normlab.lab.training import data


def _write_cifar(path, rng):
    path.mkdir()
    for name, n in [("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(path / name, "wb") as fh:
            pickle.dump(batch, fh)


def _write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_cifar10_pickle_batches(tmp_path, rng):
    _write_cifar(tmp_path / "cifar", rng)
    d = data.read_cifar10(tmp_path / "cifar")
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (5, 3, 32, 32)
    assert d.spatial_dims == 2 and d.in_channels == 3 and d.y_train.dtype.is_floating_point is False
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 0.05


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, rng, compress):
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (7, 28, 28)), compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(7) % 10, compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (3, 28, 28)), compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([1, 2, 3]), compress)
    d = data.read_mnist(tmp_path)
    assert d.x_train.shape == (7, 1, 28, 28) and d.x_test.shape == (3, 1, 28, 28)
    assert d.y_train.tolist() == list(range(7)) and d.y_test.tolist() == [1, 2, 3]


def test_loaders_explain_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch"):
        data.read_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.read_mnist(tmp_path)


def test_data_spec():
    assert data.parse_data_spec(None) == ("default", None)
    assert data.parse_data_spec("cifar10:/x/y") == ("cifar10", "/x/y")
    for bad in ("cifar10", "imagenet:/x", "mnist:"):
        with pytest.raises(ValueError, match="--data must be"):
            data.parse_data_spec(bad)


def test_embedded_data_sets():
    m = data.mnist1d()
    assert m.x_train.shape == (4000, 1, 40) and m.x_test.shape == (1000, 1, 40) and m.num_classes == 10
    d = data.digits()
    assert d.x_train.shape == (1400, 1, 8, 8) and d.num_classes == 10
    t = data.load_text()
    assert len(t.train) > 100_000 and len(t.vocab) < 200 and int(t.train.max()) < len(t.vocab)
