"""Run a sweep's work items as Ray tasks, on a local cluster or an existing one.

Each work item (one run, or a pack of runs trained together) is one Ray task with ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs. The task only trains (:func:`~normlab.lab.sweep.work.train_item`) and returns its rows; the
driver takes the results as they finish and alone writes the SQLite store, so no worker ever writes a file the
driver shares (SQLite over a network file system is not safe). A task whose worker process dies (killed, out of
memory, its node lost) is retried by Ray up to ``max_retries`` times, resuming from the item's checkpoint when the
checkpoint directory is shared; if it still fails, or the item raises, its runs are reported failed, never lost,
and a rerun of the sweep trains them again (the store skips what it has).

Ray is an optional extra (``pip install 'normlab[ray]'``), imported only here and only when used.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..store import config_key
from .work import RunRow, store_rows, train_item

if TYPE_CHECKING:
    from .checkpoint import Checkpoints

__all__ = ["RaySettings", "check_ray", "run_on_ray", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'normlab[ray]'"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the function name in its error text

_AUTH_HINT = (
    "; if the cluster uses token authentication (`ray start`'s default), set RAY_AUTH_MODE=token and "
    "give this machine its token (`ray get-auth-token` on the head, into RAY_AUTH_TOKEN)"
)

Outcome = tuple[str, float, str, str]  # (key, seconds, status, error), as run_sweep's record takes it


@dataclass(frozen=True, kw_only=True)
class RaySettings:
    """Where the tasks run and what each asks for.

    ``address`` None starts a local cluster on this machine (all its CPUs, no dashboard) for the sweep and shuts
    it down after; "auto" or "HOST:PORT" connects to a running cluster (``ray start --head``) and leaves it
    running. A Ray already initialized in this process (``ray.init`` by the caller) is used as it is.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 2  # retries of a task whose worker died; an item that raises is not retried
    connect_timeout_s: float = 5.0  # for the reachability check of HOST:PORT

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise ValueError(f"--cpus-per-run must be positive, got {self.cpus_per_run}")
        if not self.gpus_per_run >= 0:
            raise ValueError(f"--gpus-per-run must be 0 or more, got {self.gpus_per_run}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")

    @property
    def threads(self) -> int:
        """Torch threads per task: its whole CPUs (at least one), so tasks side by side do not oversubscribe."""
        return max(1, int(self.cpus_per_run))


def check_ray(settings: RaySettings) -> None:
    """Fail early, in one line, when the sweep cannot run on Ray: Ray not installed, the cluster at
    ``settings.address`` not reachable (or refusing this driver), or a local cluster too small for one task.

    With an address, this connects (and stays connected, for :func:`run_on_ray`): connecting is cheap, and it
    is the only way to see a version mismatch or a refused connection before any run. Without one it starts
    nothing: the local cluster starts only when there is work."""
    ray = _import_ray()
    if settings.address is None:
        cpus = os.cpu_count() or 1
        if not ray.is_initialized() and settings.cpus_per_run > cpus:
            raise ValueError(
                f"--cpus-per-run {settings.cpus_per_run:g} is more than this machine's {cpus} CPUs; "
                "lower it, or give --ray-address of a cluster with larger nodes"
            )
        return
    host, port = _bootstrap_address(ray, settings.address)
    _check_reachable(host, port, settings.connect_timeout_s, settings.address)
    if not ray.is_initialized():
        try:
            ray.init(address=settings.address, logging_level=logging.WARNING)
        except Exception as err:  # ConnectionError, a version mismatch (RuntimeError), a refused token...
            hint = "" if os.environ.get("RAY_AUTH_MODE") else _AUTH_HINT  # Ray says only "failed to connect"
            raise ValueError(
                f"cannot connect to the Ray cluster at {settings.address!r}: {_one_line(err)}{hint}"
            ) from None


def run_on_ray(
    items: list[list[RunConfig]],
    store_path: str,
    *,
    code: str,
    checkpoints: Checkpoints | None,
    record: Callable[[RunConfig, Outcome], None],
    settings: RaySettings | None = None,
) -> None:
    """Train every work item as a Ray task and store its rows here, as the results come in, calling ``record``
    for every run (its progress and report). ``code`` is the driver's training-code hash: a worker that imported
    other normlab code refuses its item, which is then reported failed."""
    settings = settings or RaySettings()
    _check_devices(items, settings)
    check_ray(settings)
    import ray

    started = _start_or_join(ray, settings)
    try:
        _run_tasks(ray, items, store_path, code, checkpoints, record, settings)
    finally:
        if started:  # a cluster this call started; a cluster it joined is left running for its other users
            ray.shutdown()


def _train_on_worker(
    configs: list[RunConfig], threads: int, code: str, checkpoints: Checkpoints | None
) -> list[RunRow]:
    """The task's body, on a Ray worker: the thread limits first (before torch starts its pools in a fresh
    worker; train_item then sets torch's threads in a reused one), then :func:`train_item`."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    return train_item(configs, threads=threads, code=code, checkpoints=checkpoints)


def _run_tasks(
    ray: Any,
    items: list[list[RunConfig]],
    store_path: str,
    code: str,
    checkpoints: Checkpoints | None,
    record: Callable[[RunConfig, Outcome], None],
    settings: RaySettings,
) -> None:
    """Submit every item at once (Ray queues what does not fit), then store and record each as it finishes."""
    task = ray.remote(_train_on_worker).options(
        num_cpus=settings.cpus_per_run,
        num_gpus=settings.gpus_per_run,
        max_retries=settings.max_retries,
        retry_exceptions=False,  # an error in training would only repeat
    )
    pending = {task.remote(item, settings.threads, code, checkpoints): item for item in items}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                for config, outcome in zip(item, _collect(ray, ref, item, store_path, checkpoints), strict=True):
                    record(config, outcome)
    finally:
        for ref in pending:  # interrupted: do not leave the rest training on a shared cluster
            ray.cancel(ref)


def _collect(
    ray: Any, ref: Any, item: list[RunConfig], store_path: str, checkpoints: Checkpoints | None
) -> list[Outcome]:
    """A finished task's outcome per run: stored here, or failed with the reason (the remote traceback, or why
    the worker died after its retries). A failure is reported and not stored, so a rerun trains it again."""
    try:
        rows = ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the item raised: the worker's traceback, as the local executor's
        return _failed(item, _ANSI.sub("", getattr(err, "traceback_str", None) or str(err)))
    except Exception as err:  # WorkerCrashedError after the retries, NodeDiedError, OutOfMemoryError...
        return _failed(item, f"{type(err).__name__}: {err}")
    try:
        return [(*row, "") for row in store_rows(store_path, rows, checkpoints)]
    except Exception:  # as the local executor: a run that cannot be stored is reported, and the sweep goes on
        return _failed(item, traceback.format_exc())


def _failed(item: list[RunConfig], error: str) -> list[Outcome]:
    return [(config_key(c), 0.0, "failed", error) for c in item]


def _start_or_join(ray: Any, settings: RaySettings) -> bool:
    """Make sure this process is connected to a cluster; True when it started one (this machine's, local only)."""
    if ray.is_initialized():
        return False
    if settings.address is not None:  # check_ray connects; this is for a caller that skipped it
        ray.init(address=settings.address, logging_level=logging.WARNING)
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local cluster reports nothing to anyone
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _check_devices(items: list[list[RunConfig]], settings: RaySettings) -> None:
    """A CUDA run in a task that asked for no GPU would see every GPU of its node and share them unscheduled."""
    if settings.gpus_per_run == 0 and any(c.device.startswith("cuda") for i in items for c in i):
        raise ValueError("runs on device 'cuda' need --gpus-per-run (e.g. 1) with --executor ray")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _bootstrap_address(ray: Any, address: str) -> tuple[str, int]:
    """HOST and PORT of the cluster ``address`` names ("auto": RAY_ADDRESS, or the cluster `ray start` left on
    this machine), found as ray.init would find it."""
    target = address.removeprefix("ray://")
    try:  # Ray's own resolution of "auto" (a private helper: without it, only HOST:PORT is checked)
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(target) if target == "auto" else target
    except ImportError:
        resolved = None if target == "auto" else target
    except Exception:  # "auto" and no cluster found
        raise ValueError(
            "no Ray cluster found for --ray-address auto (no RAY_ADDRESS, none started here by "
            "`ray start`); start one with `ray start --head`, or give HOST:PORT"
        ) from None
    if resolved is None and target == "auto":
        return "", 0  # Ray can find it but the helper is gone: ray.init will tell
    host, _, port = (resolved or "").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address must be 'auto' or HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _check_reachable(host: str, port: int, timeout_s: float, address: str) -> None:
    """A TCP connection to the cluster's head: ray.init itself retries an unreachable address for minutes."""
    if not host:
        return
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(
            f"the Ray cluster at {address!r} is unreachable ({host}:{port}: {_one_line(err)}); "
            "start it with `ray start --head`, or check --ray-address"
        ) from None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
