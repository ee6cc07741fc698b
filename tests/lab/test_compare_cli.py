import subprocess
import sys

import pytest

from normlab.cli import main
from normlab.lab import STUDIES


def test_list_shows_every_study_and_claim(capsys):
    assert main(["compare", "--list"]) == 0
    out = capsys.readouterr().out
    for name, study in STUDIES.items():
        assert name in out and study.claim[:30] in out


def test_help():
    res = subprocess.run([sys.executable, "-m", "normlab.cli", "compare", "--help"], capture_output=True, text=True)
    for flag in ("--study", "--norms", "--seeds", "--full", "--out", "--workers", "--device", "--fresh", "--data"):
        assert flag in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--norms", "batch,bogus"], "unknown norm 'bogus'"),
        (["--study", "nope"], "unknown study nope"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--data", "imagenet:/x"], "--data must be cifar10:PATH or mnist:PATH"),
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--budget", "0"], "--budget must be a positive factor"),
    ],
)
def test_bad_options_are_clear_errors(args, message, capsys, tmp_path):
    assert main(["compare", "--out", str(tmp_path), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_norms_option_reaches_the_models(tmp_path, capsys):
    import json

    assert (
        main(
            [
                "compare",
                "--study",
                "contrast",
                "--norms",
                "gn,in",
                "--seeds",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--workers",
                "1",
                "--budget",
                "0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "runs: 0 already stored" in out
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["config"]["norm"] for r in runs} == {"group", "instance"}
    assert {r["role"] for r in runs} == {"selection", "final", "longer budgets"}


def test_real_cifar10_files_and_fresh(tmp_path, capsys):
    """--data reads CIFAR-10 pickle batches the test writes; --fresh discards stored runs."""
    import pickle

    import numpy as np

    data = tmp_path / "cifar"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 48), ("test_batch", 24)]:
        labels = list(np.arange(n) % 10)
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(data / name, "wb") as fh:
            pickle.dump({b"data": images, b"labels": labels}, fh)
    args = [
        "compare",
        "--study",
        "contrast",
        "--norms",
        "bn",
        "--seeds",
        "1",
        "--data",
        f"cifar10:{data}",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--workers",
        "1",
        "--budget",
        "0.1",
    ]
    assert main(args) == 0
    assert "runs: 0 already stored" in capsys.readouterr().out
    from normlab.lab.store import Store

    records = Store(tmp_path / "out" / "results.sqlite").records()
    assert all(r.config["data"] == "cifar10" and r.config["data_path"] == str(data) for r in records)
    n = len(records)
    assert main(args) == 0 and f"{n} runs: {n} already stored, 0 ran now" in capsys.readouterr().out
    assert main(args + ["--fresh"]) == 0 and f"{n} runs: 0 already stored, {n} ran now" in capsys.readouterr().out


def test_first_seed_and_against(tmp_path, capsys):
    """Two runs with disjoint seeds; the second's report compares its verdicts with the first's."""
    import json

    common = [
        "compare",
        "--study",
        "contrast",
        "--norms",
        "in,none",
        "--seeds",
        "2",
        "--no-progress",
        "--workers",
        "1",
        "--budget",
        "0.1",
    ]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--first-seed", "7", "--against", str(tmp_path / "a")]) == 0
    runs = json.loads((tmp_path / "b" / "results.json").read_text())["runs"]
    assert {r["config"]["seed"] for r in runs if r["role"] == "final"} == {7, 8}
    assert {r["config"]["seed"] for r in runs if r["role"] == "selection"} == {507, 508}  # disjoint from the finals
    page = (tmp_path / "b" / "index.html").read_text()
    verdicts = json.loads((tmp_path / "a" / "results.json").read_text())["verdicts"]["contrast"]
    assert 'id="seed-stability"' in page and f"{len(verdicts)} claims judged by both" in page
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "c"), "--against", str(tmp_path / "nothing")]) == 2
    assert "--against" in capsys.readouterr().err and not (tmp_path / "c" / "results.sqlite").exists()


def test_report_shows_the_training_check(tmp_path):
    assert (
        main(
            [
                "compare",
                "--study",
                "contrast",
                "--norms",
                "bn",
                "--seeds",
                "2",
                "--no-progress",
                "--workers",
                "1",
                "--out",
                str(tmp_path),
                "--budget",
                "0.1",
            ]
        )
        == 0
    )
    page = (tmp_path / "index.html").read_text()
    assert "Trained?" in page and "the best setting reaches at least 97% mean test accuracy" in page


def test_the_default_workers_use_the_cores_this_process_may_run_on(monkeypatch):
    """One worker per core of the process's CPU affinity (not the machine's count), fewer where memory is short."""
    from normlab.lab.sweep import runner

    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: set(range(16)))
    pages = {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 64 * 2**30 // 4096}
    monkeypatch.setattr(runner.os, "sysconf", lambda name: pages[name])
    assert runner.default_workers() == 16
    pages["SC_AVPHYS_PAGES"] = int(4 * 2**30 // 4096)  # 4 GB available: two workers of 1.5 GB
    assert runner.default_workers() == int(4 // runner.WORKER_MEMORY_GB)
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {3})
    assert runner.default_workers() == 1
