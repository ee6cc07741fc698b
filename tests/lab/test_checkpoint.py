"""Long runs survive a kill: a work item checkpoints at an interval and a rerun resumes it, bit for bit on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.lab.config import make_config
from normlab.lab.sweep.checkpoint import Saver
from normlab.lab.training.packed import train_packed
from normlab.lab.training.train import run

INPUTS = Path(__file__).with_name("user_inputs.py")
TIMING = ("step_seconds",)  # wall time: measured, never equal between two runs


class Crash(Exception):
    pass


class CrashingSaver(Saver):
    """Saves once, at the ``at``-th step boundary, then raises: a process killed right after a checkpoint, with
    steps done since that are lost."""

    def __init__(self, path: Path, at: int) -> None:
        super().__init__(path, every_s=0.0)
        self.at, self.calls = at, 0

    def due(self) -> bool:
        self.calls += 1
        return self.calls in (self.at, self.at + 3)

    def save(self, state) -> None:
        super().save(state)
        if self.calls == self.at + 3:
            raise Crash


def _without_timing(output):
    metrics, curves = output
    return {k: v for k, v in metrics.items() if k not in TIMING}, curves


CONFIGS = {
    "classify": make_config(
        "classify",
        study="t",
        norm="batch",
        seed=1,
        steps=40,
        width=8,
        depth=2,
        points=10,
        lr_schedule="cosine",
        weight_decay=1e-3,
        grad_predictiveness=True,
        record_batch_stats=True,
        train_subset=400,
    ),
    "char_lm": make_config(
        "char_lm",
        study="t",
        norm="rms",
        seed=2,
        steps=30,
        dim=16,
        layers=1,
        seq_len=16,
        warmup=5,
        lr_schedule="cosine",
        points=6,
    ),
    "user": make_config(
        "user",
        study="t",
        norm="group",
        seed=4,
        model=f"{INPUTS}:convnet",
        data=f"{INPUTS}:digits",
        swap_from=["batch"],
        batch_size=16,
        steps=40,
        lr=0.05,
        points=8,
    ),
}


@pytest.mark.parametrize("task", sorted(CONFIGS))
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, task):
    config = CONFIGS[task]
    whole = run(config)
    path = tmp_path / "item.pt"
    with pytest.raises(Crash):
        run(config, saver=CrashingSaver(path, at=12))
    assert path.exists()
    resumed = run(config, saver=Saver(path, every_s=1e9))
    assert _without_timing(resumed) == _without_timing(whole)


def test_a_resumed_pack_equals_an_uninterrupted_one(tmp_path):
    configs = [
        make_config(
            "classify",
            study="t",
            norm=norm,
            seed=seed,
            steps=40,
            width=8,
            depth=2,
            points=10,
            lr=lr,
            train_subset=400,
            grad_predictiveness=True,
        )
        for norm, seed, lr in (("batch", 0, 0.05), ("group", 1, 0.1), ("batch", 2, 50.0))
    ]
    whole = train_packed(configs)
    assert whole[2][0]["diverged"] == 1.0  # a run that diverged before the checkpoint stays stopped after it
    path = tmp_path / "pack.pt"
    with pytest.raises(Crash):
        train_packed(configs, saver=CrashingSaver(path, at=15))
    assert train_packed(configs, saver=Saver(path, every_s=1e9)) == whole


def test_a_checkpoint_that_cannot_be_read_starts_the_run_over(tmp_path):
    path = tmp_path / "item.pt"
    path.write_bytes(b"not a checkpoint")
    config = CONFIGS["classify"]
    assert _without_timing(run(config, saver=Saver(path, every_s=1e9))) == _without_timing(run(config))


def _compare(out: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "normlab.cli",
        "compare",
        "--model",
        f"{INPUTS}:convnet",
        "--data",
        f"{INPUTS}:digits",
        "--norms",
        "group",
        "--batch-sizes",
        "8",
        "--seeds",
        "2",
        "--steps",
        "120",
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "1",
        *extra,
    ]
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def _rows(out: Path) -> dict[str, dict]:
    payload = json.loads((out / "results.json").read_text())
    return {
        json.dumps(r["config"], sort_keys=True): {k: v for k, v in r["metrics"].items() if k not in TIMING}
        for r in payload["runs"]
    }


def _finish(proc: subprocess.Popen) -> None:
    try:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _kill_mid_run(out: Path) -> None:
    """Start the compare and kill -9 its process group as soon as a checkpoint exists: some run is then mid-way.
    (A run that finishes in the instant between the look and the kill removes its checkpoint: then the compare is
    started again, resuming, and killed at its next checkpoint.)"""
    for _ in range(5):
        proc = _compare(out, "--checkpoint-every", "0.2")
        try:
            deadline = time.monotonic() + 240
            while not list((out / "checkpoints").glob("*.pt")) and time.monotonic() < deadline:
                assert proc.poll() is None, f"the compare ended before any checkpoint: {proc.stderr.read()}"
                time.sleep(0.05)
        finally:  # at once: the run goes on a few steps past its checkpoint (steps the resumed run redoes)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if list((out / "checkpoints").glob("*.pt")):
            return
    raise AssertionError("every kill came as a run finished")


def test_kill_9_mid_run_then_rerun_loses_nothing_and_matches(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _kill_mid_run(killed)
    _finish(_compare(killed, "--checkpoint-every", "0.2"))
    _finish(_compare(whole, "--checkpoint-every", "0"))
    assert _rows(killed) == _rows(whole)
    assert not list((killed / "checkpoints").glob("*.pt"))
