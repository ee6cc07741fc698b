"""The results store: atomic rows, no duplicates, concurrent writers, and nothing finished lost to kill -9."""

import multiprocessing as mp
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

from workers import store_writer

from normlab.lab.store import Store, config_key


def _config(i, study="s"):
    return {"study": study, "task": "classify", "norm": "batch", "seed": i}


def test_put_and_read_back(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        assert store.put(_config(0), {"test_acc": 0.5}, {"loss": [1.0, 0.5]}, 1.5)
        assert not store.put(_config(0), {"test_acc": 0.9}, {}, 1.0)  # same configuration: ignored
        store.put(_config(1), {}, {}, 0.1, status="not_applicable", note="IN needs spatial dims")
        records = {r.config["seed"]: r for r in store.records("s")}
    assert records[0].metrics == {"test_acc": 0.5} and records[0].curves == {"loss": [1.0, 0.5]}
    assert records[1].status == "not_applicable" and "spatial" in records[1].note
    assert config_key(_config(0)) != config_key(_config(1))
    assert config_key(_config(0)) == config_key(dict(reversed(list(_config(0).items()))))


def test_records_by_key_reads_only_those_in_key_order(tmp_path):
    """A lab run reads the new rows after every round by key; more keys than one query holds come in batches."""
    with Store(tmp_path / "r.sqlite") as store:
        for i in range(1200):
            store.put(_config(i, study="a" if i % 3 else "b"), {"i": float(i)}, {}, 0.0)
        everything = store.records()
        assert [r.key for r in everything] == sorted(r.key for r in everything) and len(everything) == 1200
        wanted = [config_key(_config(i, study="a" if i % 3 else "b")) for i in range(0, 1200, 2)] + ["missing"]
        some = store.records(keys=wanted)
        assert [r.key for r in some] == sorted(set(wanted) - {"missing"})
        assert {r.metrics["i"] for r in some} == {float(i) for i in range(0, 1200, 2)}
        only_b = store.records("b", keys=wanted)
        assert {r.metrics["i"] for r in only_b} == {float(i) for i in range(0, 1200, 6)}
        assert store.records(keys=[]) == []


def test_parallel_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "r.sqlite")
    Store(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=store_writer, args=(path, start, 60)) for start in (0, 30, 60)]  # overlapping keys
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(path) as store:
        assert store.integrity_ok()
        assert store.count() == 120  # keys 0..119, each once
        assert sorted(r.config["seed"] for r in store.records()) == list(range(120))


def test_kill_9_mid_sweep_keeps_finished_runs_and_resumes(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "normlab.cli",
        "compare",
        "--study",
        "weight-decay",
        "--seeds",
        "2",
        "--workers",
        "1",
        "--pack",
        "2",
        "--no-progress",
        "--out",
        str(out),
        "--budget",
        "0.3",
    ]  # kill, not train
    env = dict(os.environ, NORMLAB_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "results.sqlite"
    deadline = time.time() + 240
    stored = 0
    while time.time() < deadline and stored < 2:
        time.sleep(0.2)
        if db.exists():
            try:
                stored = sqlite3.connect(db, timeout=5).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
    assert stored >= 2, "the sweep never stored a run"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    with Store(db) as store:
        assert store.integrity_ok()
        before = {r.key for r in store.records()}
        assert len(before) >= 2 and len(before) < 16, "kill came too late to test anything"
        assert all(r.status == "done" and r.metrics for r in store.records())
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # 16 runs at T and 2T, then those a verdict needs at larger budgets: as many as the data ask for
    total, skipped, ran = map(
        int, re.search(r"(\d+) runs: (\d+) already stored, (\d+) ran now", resumed.stdout).groups()
    )
    assert total >= 16 and skipped == len(before) and ran == total - len(before)
    with Store(db) as store:
        assert store.count() == total and before <= {r.key for r in store.records()}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert f"{total} runs: {total} already stored, 0 ran now" in again.stdout
