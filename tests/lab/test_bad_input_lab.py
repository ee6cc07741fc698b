"""Bad input to `normlab compare`: one clear line naming the path, exit 2, before any run, the user's files
unchanged."""

import hashlib
import os
import sqlite3
import subprocess
import sys

import pytest

from normlab.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compare(tmp_path, capsys, *args):
    code = main(
        ["compare", "--study", "contrast", "--norms", "bn", "--seeds", "1", "--no-progress", "--workers", "1", *args]
    )
    captured = capsys.readouterr()
    return code, captured.err


def test_missing_data_directory(tmp_path, capsys):
    code, err = _compare(tmp_path, capsys, "--out", str(tmp_path / "out"), "--data", f"cifar10:{tmp_path}/nonexistent")
    assert code == 2
    assert err.count("\n") == 1 and f"{tmp_path}/nonexistent is not a directory" in err and "data_batch" in err
    assert not (tmp_path / "out" / "results.sqlite").exists()  # no run started


def test_malformed_data_directory(tmp_path, capsys):
    data = tmp_path / "cifar"
    data.mkdir()
    (data / "data_batch_1").write_bytes(b"not a pickle")
    (data / "test_batch").write_bytes(b"not a pickle either")
    before = {p.name: _digest(p) for p in data.iterdir()}
    code, err = _compare(tmp_path, capsys, "--out", str(tmp_path / "out"), "--data", f"cifar10:{data}")
    assert code == 2 and err.count("\n") == 1 and f"could not read {data}" in err
    assert {p.name: _digest(p) for p in data.iterdir()} == before


def test_mnist_directory_without_idx_files(tmp_path, capsys):
    code, err = _compare(tmp_path, capsys, "--out", str(tmp_path / "out"), "--data", f"mnist:{tmp_path}")
    assert code == 2 and "train-images-idx3-ubyte" in err


def test_corrupt_store_is_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    store = out / "results.sqlite"
    store.write_bytes(b"this is not a database" * 100)
    before = _digest(store)
    code, err = _compare(tmp_path, capsys, "--out", str(out))
    assert code == 2 and err.count("\n") == 1
    assert f"{store}: expected a normlab results store" in err and "Traceback" not in err
    assert _digest(store) == before and sorted(p.name for p in out.iterdir()) == ["results.sqlite"]


def test_foreign_database_is_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    store = out / "results.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.close()
    before = _digest(store)
    for extra in ([], ["--fresh"]):
        code, err = _compare(tmp_path, capsys, "--out", str(out), *extra)
        assert code == 2 and "not a normlab results store (tables: invoices)" in err
        assert _digest(store) == before


def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "report"
    target.write_text("mine")
    code, err = _compare(tmp_path, capsys, "--out", str(target))
    assert code == 2 and f"--out {target}: expected a directory, found a file" in err
    assert target.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: read-only directories need an ordinary user")
def test_unwritable_out(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = _compare(tmp_path, capsys, "--out", str(locked / "out"))
    assert code == 2 and "is not writable" in err


def test_unwritable_out_as_an_ordinary_user(tmp_path):
    """CI runs as root, where permissions do not bind: drop to an ordinary user in a subprocess to test it."""
    if os.geteuid() != 0:
        pytest.skip("covered by test_unwritable_out")
    import tempfile

    base = tempfile.mkdtemp(dir="/tmp")  # pytest's own tmp_path sits in a directory only root may enter
    os.chmod(base, 0o755)
    locked = __import__("pathlib").Path(base) / "locked"
    locked.mkdir(mode=0o555)
    code = (
        "import os, sys; from normlab.cli import main; "
        "import normlab.lab, normlab.lab.training.data, normlab.lab.store; "
        "os.setgid(65534); os.setuid(65534); "
        f"sys.exit(main(['compare', '--study', 'contrast', '--no-progress', '--out', {str(locked / 'out')!r}]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path), "NORMLAB_CACHE": str(tmp_path / "cache")},
    )
    assert res.returncode == 2, res.stderr
    assert f"--out {locked / 'out'}: {locked} is not writable" in res.stderr
