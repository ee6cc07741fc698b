"""The Ray executor on a real local cluster: the same metrics as the local executor, every run stored once by the
driver alone, a killed worker's task retried (or reported failed, never lost), and one-line errors up front."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402

from normlab.lab.config import make_config  # noqa: E402
from normlab.lab.store import Store, config_key  # noqa: E402
from normlab.lab.sweep.executors import INSTALL_HINT, RaySettings, check_ray, run_on_ray  # noqa: E402
from normlab.lab.sweep.runner import run_sweep  # noqa: E402
from normlab.lab.training.packed import plan_packs  # noqa: E402

TASK_TITLE = "ray::_train_on_worker"  # a Ray worker's process title while it runs one of our tasks
TINY = dict(study="ray", batch_size=8, train_subset=256, points=4, width=8, depth=2)


def _sweep(steps: int = 30) -> list[dict]:
    """A pack of three runs (batch norm, seeds 0-2) and a run that trains alone (LRN does not pack)."""
    return [make_config(norm="batch", seed=s, steps=steps, **TINY) for s in range(3)] + [
        make_config(norm="lrn", seed=0, steps=steps, **TINY)
    ]


def _stored(path) -> dict[str, object]:
    """key -> record, asserting the store holds each key once (the primary key makes a duplicate impossible;
    the count says no row hides under another key)."""
    with Store(path) as store:
        records = store.records()
        assert store.count() == len(records) == len({r.key for r in records})
    return {r.key: r for r in records}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Keep torch in this process and in the cluster's workers (started from this environment) at one thread."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cluster():
    """One local two-CPU cluster for the module's tests that kill its workers (no dashboard, nothing outside)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def test_same_metrics_under_ray_and_locally(tmp_path, monkeypatch):
    """run_on_ray starts its own local cluster (no ray.init before), trains the pack and the single run, stores
    them here and shuts the cluster down; the local executor, at the same one thread, computes the same numbers."""
    assert not ray.is_initialized(), "this test runs before the module's cluster starts"
    configs = _sweep()
    assert sorted(len(item) for item in plan_packs(configs)) == [1, 3]
    report = run_sweep(configs, tmp_path / "ray.sqlite", progress=False, executor="ray")
    assert not ray.is_initialized(), "a cluster run_on_ray started is shut down after the sweep"
    assert (report.total, report.ran, report.failed) == (4, 4, [])

    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # the local executor's one worker trains at one thread
    local = run_sweep(configs, tmp_path / "local.sqlite", progress=False, executor="local")
    assert (local.ran, local.failed) == (4, [])

    on_ray, here = _stored(tmp_path / "ray.sqlite"), _stored(tmp_path / "local.sqlite")
    assert set(on_ray) == set(here) == {config_key(c) for c in configs}
    for key, record in here.items():
        assert on_ray[key].status == record.status == "done"
        assert on_ray[key].metrics == record.metrics  # exactly: same code, same thread count, same CPU
        assert on_ray[key].curves == record.curves


class _Killer(threading.Thread):
    """SIGKILLs the first worker of this process's cluster seen running one of our tasks, a moment into it."""

    def __init__(self, into_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.into_s, self.killed, self.stop = into_s, None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for pid in _our_workers():
                time.sleep(self.into_s)
                if pid in _our_workers():  # still in its task: kill it mid-task
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                break
            time.sleep(0.05)


def _our_workers() -> list[int]:
    """Pids of processes descending from this one whose title says they run one of our tasks (so a Ray cluster
    someone else runs on this machine is never touched)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith(TASK_TITLE) and _descends_from(int(entry), os.getpid()):
            found.append(int(entry))
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the parent pid, after the command's name
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def _long_sweep() -> list[dict]:
    """Three single runs of a few seconds each: long enough to be killed mid-task."""
    return [make_config(norm="lrn", seed=s, steps=400, **TINY) for s in range(3)]


def _run_with_a_kill(configs, path, settings):
    killer = _Killer()
    killer.start()
    try:
        report = run_sweep(configs, path, progress=False, executor="ray", ray=settings)
    finally:
        killer.stop.set()
        killer.join(10)
    assert killer.killed is not None, "no worker was seen running a task"
    with pytest.raises(ProcessLookupError):
        os.kill(killer.killed, 0)  # that worker is gone
    return report


def test_a_killed_worker_s_task_is_retried_and_every_run_stored_once(tmp_path, cluster):
    configs, path = _long_sweep(), tmp_path / "r.sqlite"
    report = _run_with_a_kill(configs, path, RaySettings(max_retries=2))
    assert (report.ran, report.failed) == (3, [])  # the killed task ran again, on another worker
    stored = _stored(path)
    assert set(stored) == {config_key(c) for c in configs}
    assert all(r.status == "done" and r.metrics for r in stored.values())
    again = run_sweep(configs, path, progress=False, executor="ray")  # resumes: everything is stored already
    assert (again.total, again.skipped, again.ran) == (3, 3, 0)
    assert _stored(path).keys() == stored.keys()


def test_without_retries_a_killed_task_is_reported_failed_and_a_rerun_trains_it(tmp_path, cluster):
    configs, path = _long_sweep(), tmp_path / "r.sqlite"
    report = _run_with_a_kill(configs, path, RaySettings(max_retries=0))
    assert report.ran == 2 and len(report.failed) == 1  # reported, not lost
    failed_config, error = report.failed[0]
    assert "WorkerCrashedError" in error or "died" in error, error
    stored = _stored(path)
    assert config_key(failed_config) not in stored and len(stored) == 2
    rerun = run_sweep(configs, path, progress=False, executor="ray")
    assert (rerun.skipped, rerun.ran, rerun.failed) == (2, 1, [])
    assert set(_stored(path)) == {config_key(c) for c in configs}


def test_an_item_that_raises_is_reported_failed_with_its_traceback(tmp_path, cluster):
    """Workers whose training code differs from the driver's refuse; the sweep reports each run and goes on."""
    configs = _sweep(steps=2)
    outcomes = []
    run_on_ray(
        plan_packs(configs),
        str(tmp_path / "r.sqlite"),
        code="not-this-code",
        checkpoints=None,
        record=lambda config, outcome: outcomes.append((config, outcome)),
        settings=RaySettings(),
    )
    assert sorted(config_key(c) for c, _ in outcomes) == sorted(config_key(c) for c in configs)
    for _, (_key, _, status, error) in outcomes:
        assert status == "failed" and "RuntimeError: the training code changed" in error
        assert 'executors.py", line' in error and "\x1b[" not in error  # the worker's traceback, uncoloured
    assert _stored(tmp_path / "r.sqlite") == {}


def test_an_unreachable_cluster_is_one_line_before_any_run(tmp_path):
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        check_ray(RaySettings(address="127.0.0.1:1", connect_timeout_s=2))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "127.0.0.1:1" in message and "unreachable" in message
    with pytest.raises(ValueError, match="unreachable"):  # through run_sweep: nothing ran, nothing stored
        run_sweep(
            _sweep(steps=2),
            tmp_path / "r.sqlite",
            progress=False,
            executor="ray",
            ray=RaySettings(address="127.0.0.1:1", connect_timeout_s=2),
        )
    assert _stored(tmp_path / "r.sqlite") == {}
    with pytest.raises(ValueError, match="HOST:PORT"):
        check_ray(RaySettings(address="no-port-here"))


def test_ray_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ValueError) as err:
        check_ray(RaySettings())
    assert INSTALL_HINT in str(err.value) and "\n" not in str(err.value)


def test_settings_and_cuda_runs_are_checked_up_front(tmp_path):
    with pytest.raises(ValueError, match="cpus-per-run"):
        RaySettings(cpus_per_run=0)
    with pytest.raises(ValueError, match="gpus-per-run"):
        run_on_ray(
            [[make_config(norm="batch", seed=0, steps=2, device="cuda", **TINY)]],
            str(tmp_path / "r.sqlite"),
            code="",
            checkpoints=None,
            record=lambda *a: None,
            settings=RaySettings(),
        )
    assert RaySettings(cpus_per_run=2.5).threads == 2 and RaySettings(cpus_per_run=0.5).threads == 1
