"""Run a sweep: skip what the store has, run the rest (in parallel processes), each worker storing its own rows."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..store import Store, config_key, training_code_hash
from ..training.packed import MAX_COPIES, plan_packs
from ..training.train import ladders
from .checkpoint import Checkpoints
from .work import RunRow, execute, store_rows, train_item

__all__ = [
    "SweepReport",
    "RunRow",
    "run_sweep",
    "execute",
    "train_item",
    "store_rows",
    "default_workers",
    "WORKER_MEMORY_GB",
]

WORKER_MEMORY_GB = 1.5  # a worker's peak resident memory, with headroom (measured: under 1 GB for the largest pack)


def default_workers() -> int:
    """Worker processes a sweep uses by default: one per core this process may run on (its CPU affinity, not the
    machine's count), but no more than the available memory holds at :data:`WORKER_MEMORY_GB` each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        available = float("inf")
    return max(1, min(cores, int(available // WORKER_MEMORY_GB)))


@dataclass
class SweepReport:
    total: int
    skipped: int
    ran: int = 0
    failed: list[tuple[RunConfig, str]] = field(default_factory=list)
    seconds: float = 0.0


def _execute_safely(
    configs: list[RunConfig], store_path: str, threads: int, code: str, checkpoints: Checkpoints | None = None
) -> list[tuple[str, float, str, str]]:
    try:
        return [(*row, "") for row in execute(configs, store_path, threads, code, checkpoints)]
    except Exception:  # a broken run must not take the sweep down; it is reported and not stored
        error = traceback.format_exc()
        return [(config_key(c), 0.0, "failed", error) for c in configs]


@contextmanager
def worker_pool(workers: int, executor: str = "local") -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` processes of this machine for one sweep or several (None where runs train in this process or on
    Ray): a lab run's rounds share one pool instead of starting their workers again (each imports torch and loads
    the kernels: about 2 s a round, while the cores wait)."""
    if executor != "local" or workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        yield pool


def run_sweep(
    configs: list[RunConfig],
    store_path: str | Path,
    workers: int = 1,
    progress: bool = True,
    on_result: Callable[[RunConfig, str], None] | None = None,
    max_pack: int = MAX_COPIES,
    checkpoints: Checkpoints | None = None,
    executor: str = "local",
    ray: Any = None,
    pool: ProcessPoolExecutor | None = None,
) -> SweepReport:
    """Run every configuration not yet in the store at ``store_path``; runs that share a pack key train together,
    at most ``max_pack`` at a time (1: every run alone). ``executor`` "local" runs the work items in ``workers``
    processes of this machine (``pool``, when given: :func:`worker_pool`'s, kept across sweeps), each storing its
    own rows; "ray" runs each item as a Ray task with the resources of ``ray``
    (:class:`normlab.lab.sweep.executors.RaySettings`) and stores the rows here. With ``checkpoints``, each item
    saves its training state at their interval, and a rerun resumes it."""
    untyped = [type(c).__name__ for c in configs if not isinstance(c, RunConfig)]
    if untyped:
        raise TypeError(
            f"run_sweep: configs must be typed run configurations (normlab.lab.config.make_config), got {untyped[0]}"
        )
    store_path = str(store_path)
    with Store(store_path) as store:
        finished = store.finished_keys()
    unique = {config_key(c): c for c in configs}
    todo = [c for k, c in unique.items() if k not in finished]
    report = SweepReport(total=len(unique), skipped=len(unique) - len(todo))
    if not todo:
        return report
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    code = training_code_hash()
    bar = _progress_bar(len(todo), progress)
    start = time.perf_counter()

    def record(config: RunConfig, outcome: tuple[str, float, str, str]) -> None:
        _, _, status, error = outcome
        if status == "failed":
            report.failed.append((config, error))
        else:
            report.ran += 1
        if on_result:
            on_result(config, status)
        bar.update(1)
        bar.set_postfix_str(f"{config.study}: {config.norm}", refresh=False)

    items = _schedule(_spread(plan_packs(todo, max_pack), workers if executor == "local" else 1))
    try:
        if executor == "ray":  # normlab.lab.sweep.executors: each item a Ray task; this driver alone stores the rows
            from .executors import run_on_ray

            run_on_ray(items, store_path, code=code, checkpoints=checkpoints, record=record, settings=ray)
        elif executor != "local":
            raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
        elif workers <= 1:
            for item in items:
                for config, outcome in zip(
                    item, _execute_safely(item, store_path, threads, code, checkpoints), strict=True
                ):
                    record(config, outcome)
        else:
            with worker_pool(workers) if pool is None else nullcontext(pool) as running:
                assert running is not None
                futures = {
                    running.submit(_execute_safely, item, store_path, threads, code, checkpoints): item
                    for item in items
                }
                for future in as_completed(futures):
                    for config, outcome in zip(futures[future], future.result(), strict=True):
                        record(config, outcome)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


# ms a training step on one core (2026-12-07, the lab's own steps): a language model (14-15 per token, 18-19 BN on the
# padded batch, with the attention kernel); a distributed run (its ranks); a pack of K ConvNets at batch B about
# 1.5 + 0.09 K + 0.009 K B (3.4 at K=20, B=2; 3.4 at K=5, B=32; 4.5 at K=20, B=8)
_STEP_MS = {"char_lm": 16.0, "distributed": 33.0}


def _cost(item: list[RunConfig]) -> float:
    """A rough cost of a work item in ms, for ordering: its longest budget's steps (budget x 2**doublings of the
    base steps) times a step's measured time at its task, batch and pack size."""
    c = item[0]
    examples = getattr(c, "train_subset", None) or 4000
    batch = max(getattr(c, "batch_size", 1), 1)
    steps = getattr(c, "steps", None) or getattr(c, "epochs", 1) * examples / batch
    steps *= getattr(c, "budget", 1.0) * 2 ** max(getattr(x, "doublings", 0) for x in item)
    runs = len(ladders(item))
    step_ms = _STEP_MS.get(c.task, 1.5 + 0.09 * runs + 0.009 * runs * batch)
    return steps * step_ms


def _spread(items: list[list[RunConfig]], workers: int) -> list[list[RunConfig]]:
    """Split the costliest packs in two until every worker has an item (a sweep's last rounds, the runs a verdict
    needs at a larger budget, may be one pack: alone it would hold one core while the others wait)."""
    items = list(items)
    while len(items) < workers:
        runs = [ladders(item) for item in items]
        splittable = [i for i, item_runs in enumerate(runs) if len(item_runs) > 1]
        if not splittable:
            break
        i = max(splittable, key=lambda i: _cost(items[i]))
        items.pop(i)
        half = len(runs[i]) // 2
        items += [[c for run in runs[i][:half] for c in run], [c for run in runs[i][half:] for c in run]]
    return items


def _schedule(items: list[list[RunConfig]]) -> list[list[RunConfig]]:
    """Longest first, so the workers finish together; the language models (memory-bound: two side by side ran
    each 40% slower, measured) alternate with the CNN packs."""
    items = sorted(items, key=_cost, reverse=True)
    lms = [i for i in items if i[0].task == "char_lm"]
    others = [i for i in items if i[0].task != "char_lm"]
    merged: list[list[RunConfig]] = []
    while lms or others:
        for queue in (others, lms):
            if queue:
                merged.append(queue.pop(0))
    return merged


def _progress_bar(total: int, enabled: bool) -> Any:  # a tqdm bar (tqdm ships no types)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="normlab compare", unit="run", disable=not enabled, dynamic_ncols=True)
