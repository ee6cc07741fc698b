"""One work item (a single run, or a pack of runs trained together): trained, then stored. Any executor runs items
with these two functions: a local worker calls both, a remote one (Ray) only :func:`train_item`, handing its rows to
the driver, which stores them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import RunConfig
from ..store import Store, config_key, training_code_hash
from ..training.models import NotApplicable
from .checkpoint import Checkpoints

__all__ = ["RunRow", "train_item", "store_rows", "execute"]


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """One run's outcome, as a worker hands it to whoever stores it."""

    config: RunConfig
    metrics: dict[str, float]
    curves: dict[str, list[float]]
    seconds: float
    status: str  # "done" or "not_applicable" (a failed run raises instead: it is reported, never stored)
    note: str = ""


def train_item(
    configs: list[RunConfig], threads: int = 1, code: str | None = None, checkpoints: Checkpoints | None = None
) -> list[RunRow]:
    """Train one work item (a single run, or a pack of runs trained together, each at one or several budgets) and
    return one row per configuration, storing
    nothing: a local worker stores its rows itself, a remote one (Ray) hands them to the driver. ``code`` is the
    driver's training-code hash: a worker that imported other training code (edited during the sweep) refuses,
    rather than return rows under keys the driver never asks for. With ``checkpoints``, the item saves its state at
    their interval and resumes from a saved one."""
    import torch

    if code is not None and code != training_code_hash():
        raise RuntimeError("the training code changed while the sweep ran; run `normlab compare` again")

    from ..training.packed import train_packed
    from ..training.train import can_branch, ladders, run_ladder

    torch.set_num_threads(threads)
    saver = checkpoints.saver(configs) if checkpoints is not None else None
    start = time.perf_counter()
    try:
        if len(ladders(configs)) > 1:  # several runs, packed: each one's stable phase kept for a larger budget
            trunk_for = None if checkpoints is None else (lambda run: checkpoints.trunk(run, packed=True))
            outputs = train_packed(configs, saver=saver, trunk_for=trunk_for)
        else:  # one run: its stable phase is kept for a larger budget asked for later
            trunk = checkpoints.trunk(configs) if checkpoints is not None and can_branch(configs[0]) else None
            outputs = run_ladder(configs, saver=saver, trunk=trunk)
        rows = [(m, c, "done", "") for m, c in outputs]
    except NotApplicable as err:
        rows = [({}, {}, "not_applicable", str(err))] * len(configs)
    seconds = (time.perf_counter() - start) / len(configs)  # a pack's time, shared by its runs
    return [
        RunRow(config=config, metrics=m, curves=c, seconds=seconds, status=status, note=note)
        for config, (m, c, status, note) in zip(configs, rows, strict=True)
    ]


def store_rows(
    store_path: str, rows: list[RunRow], checkpoints: Checkpoints | None = None
) -> list[tuple[str, float, str]]:
    """Store one work item's rows (one transaction each), then remove its checkpoint; (key, seconds, status) per
    run."""
    with Store(store_path) as store:
        for row in rows:
            store.put(row.config, row.metrics, row.curves, row.seconds, status=row.status, note=row.note)
    if checkpoints is not None:
        checkpoints.remove([row.config for row in rows])
    return [(config_key(row.config), row.seconds, row.status) for row in rows]


def execute(
    configs: list[RunConfig],
    store_path: str,
    threads: int = 1,
    code: str | None = None,
    checkpoints: Checkpoints | None = None,
) -> list[tuple[str, float, str]]:
    """:func:`train_item`, then :func:`store_rows`: a local worker's whole job."""
    return store_rows(store_path, train_item(configs, threads, code, checkpoints), checkpoints)
