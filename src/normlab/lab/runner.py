"""Run a sweep: skip what the store has, run the rest (in parallel processes), each worker storing its own rows."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .models import NotApplicable
from .store import Store, config_key

__all__ = ["SweepReport", "run_sweep", "execute"]


@dataclass
class SweepReport:
    total: int
    skipped: int
    ran: int = 0
    failed: list[tuple[dict, str]] = field(default_factory=list)
    seconds: float = 0.0


def execute(config: dict[str, Any], store_path: str, threads: int = 1) -> tuple[str, float, str]:
    """Run one configuration and store its row; returns (key, seconds, status). Runs in a worker process."""
    import torch

    from .train import run

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        metrics, curves = run(config)
        status, note = "done", ""
    except NotApplicable as err:
        metrics, curves, status, note = {}, {}, "not_applicable", str(err)
    seconds = time.perf_counter() - start
    with Store(store_path) as store:
        store.put(config, metrics, curves, seconds, status=status, note=note)
    return config_key(config), seconds, status


def _execute_safely(config: dict[str, Any], store_path: str, threads: int) -> tuple[str, float, str, str]:
    try:
        return (*execute(config, store_path, threads), "")
    except Exception:  # a broken run must not take the sweep down; it is reported and not stored
        return config_key(config), 0.0, "failed", traceback.format_exc()


def run_sweep(
    configs: list[dict[str, Any]],
    store_path: str | Path,
    workers: int = 1,
    progress: bool = True,
    on_result: Callable[[dict, str], None] | None = None,
) -> SweepReport:
    """Run every configuration not yet in the store at ``store_path``."""
    store_path = str(store_path)
    with Store(store_path) as store:
        finished = store.finished_keys()
    unique = {config_key(c): c for c in configs}
    todo = [c for k, c in unique.items() if k not in finished]
    report = SweepReport(total=len(unique), skipped=len(unique) - len(todo))
    if not todo:
        return report
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = _progress_bar(len(todo), progress)
    start = time.perf_counter()

    def record(config: dict, outcome: tuple[str, float, str, str]) -> None:
        _, _, status, error = outcome
        if status == "failed":
            report.failed.append((config, error))
        else:
            report.ran += 1
        if on_result:
            on_result(config, status)
        bar.update(1)
        bar.set_postfix_str(f"{config['study']}: {config.get('norm')}", refresh=False)

    try:
        if workers <= 1:
            for config in todo:
                record(config, _execute_safely(config, store_path, threads))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_execute_safely, c, store_path, threads): c for c in todo}
                for future in as_completed(futures):
                    record(futures[future], future.result())
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="normlab compare", unit="run", disable=not enabled, dynamic_ncols=True)
