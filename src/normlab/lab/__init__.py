"""The lab behind ``normlab compare``: re-test the folk claims about normalization on this machine.

Its layers, each a folder whose docstring says what it may import (tests/test_structure.py checks it):

- the base: :mod:`.config` (one typed configuration per run), :mod:`.metrics` (metric names), :mod:`.store` (the
  SQLite store of finished runs, keyed by configuration and training code);
- :mod:`.training`: one run, from its configuration to its metrics (data, models, the loop, packs, probes);
- :mod:`.sweep`: which runs are missing, packed and trained on processes here or on a Ray cluster;
- :mod:`.judging`: stored runs -> each setting's learning rate, verdicts settled over budgets, the HTML report;
- :mod:`.studies`: the built-in studies, one file each (claim, configs, analysis);
- :mod:`.user_study`: the study of the user's own model and data, and ``normlab advise``;
- this module, the facade: :func:`compare` and :func:`compare_model` run the phases in order.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig
from .judging.fairness import StudyPlan
from .judging.report import OUTCOME_ORDER, load_verdicts, write_report
from .judging.study import Options, Study, StudyResult
from .judging.verdicts import Outcome
from .store import RunRecord, Store, config_key
from .studies import STUDIES
from .sweep.checkpoint import Checkpoints
from .sweep.runner import SweepReport, run_sweep, worker_pool
from .training.packed import MAX_COPIES
from .user_study.study import UserSpec

__all__ = ["STUDIES", "Options", "Execution", "UserSpec", "compare", "compare_model", "OUTCOME_ORDER", "study_variants"]


def study_variants() -> set[str]:
    """The labels ``--norms`` accepts besides registry names: the studies' own variants."""
    return {label for study in STUDIES.values() for label in study.variants}


def preflight(out: Path, options: Options, execution: Execution | None = None) -> None:
    """Check what the user gave before any run starts: ValueError with one clear line naming the path and what was
    expected. Reads only: a bad store or data directory is left as it was."""
    from .store import check_store
    from .training.data import check_data

    check_data(options.data)
    if execution is not None and execution.executor == "ray":
        from .sweep.executors import RaySettings, check_ray

        check_ray(execution.ray or RaySettings())
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: expected a directory, found a file")
        existing = next((p for p in [out, *out.parents] if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--out {out}: {existing} is not writable")
        check_store(out / "results.sqlite")
    except OSError as err:
        raise ValueError(f"--out {out}: cannot be used ({err.strerror or err})") from None


@dataclass(frozen=True, kw_only=True)
class Execution:
    """Where and how a sweep's runs train: ``executor`` "local" (``workers`` processes here) or "ray" (``ray``:
    :class:`normlab.lab.sweep.executors.RaySettings`), packs of up to ``max_pack`` runs, checkpoints every
    ``checkpoint_every`` seconds into ``<out>/checkpoints`` (0: none)."""

    workers: int = 1
    max_pack: int = MAX_COPIES
    executor: str = "local"
    ray: Any = None
    checkpoint_every: float = 120.0
    progress: bool = True


def compare(
    out: str | Path = "normlab-results",
    studies: list[str] | None = None,
    options: Options = Options(),
    workers: int = 1,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[..., object] = print,
    against: str | Path | None = None,
    max_pack: int = MAX_COPIES,
    execution: Execution | None = None,
) -> tuple[Path, dict, bool]:
    """Run the studies (skipping runs already stored in ``out``), analyze them and write the report; with
    ``against`` (another run's output directory, other seeds), the report compares the two runs' verdicts.

    Returns ``(index_path, {study: StudyResult}, all_runs_ok)``.
    """
    names = studies or list(STUDIES)
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise ValueError(f"unknown study {', '.join(unknown)}; available: {', '.join(STUDIES)}")
    execution = execution or Execution(workers=workers, max_pack=max_pack, progress=progress)
    out = Path(out)
    preflight(out, options, execution)
    other = None if against is None else (Path(against), load_verdicts(Path(against)))  # fails before any run
    return run_studies(out, [STUDIES[n] for n in names], options, execution, fresh=fresh, log=log, other=other)


def compare_model(
    spec: UserSpec,
    out: str | Path = "normlab-results",
    options: Options = Options(),
    execution: Execution = Execution(),
    fresh: bool = False,
    log: Callable[..., object] = print,
) -> tuple[Path, dict[str, StudyResult], bool]:
    """The user's study (:class:`~normlab.lab.user_study.study.UserSpec`: your model, your data, the methods and batch
    sizes to compare): every input checked before any run, then run, judged and reported as the built-in studies.

    Example::

        >>> from normlab.lab import UserSpec, compare_model
        >>> spec = UserSpec(model="torchvision:resnet18", model_args={"num_classes": 10}, data="cifar10:cifar-10",
        ...                 norms=("batch", "group", "layer2d"), batch_sizes=(4, 32))
        >>> compare_model(spec, "results")  # doctest: +SKIP
    """
    from .user_study.prepare import prepare_user_study

    out = Path(out)
    preflight(out, options, execution)
    study = prepare_user_study(spec)
    return run_studies(out, [study], options, execution, fresh=fresh, log=log)


def run_studies(
    out: Path,
    chosen: list[Study],
    options: Options,
    execution: Execution,
    fresh: bool = False,
    log: Callable[..., object] = print,
    other: tuple[Path, dict[tuple[str, str], Outcome]] | None = None,
) -> tuple[Path, dict[str, StudyResult], bool]:
    """The phases every compare goes through: learning-rate selection, final runs at budgets T and 2T and larger
    ones where a verdict is not settled, analysis, report."""
    if fresh:
        for path in (
            out / "results.sqlite",
            out / "results.sqlite-wal",
            out / "results.sqlite-shm",
            out / "figures",
            out / "checkpoints",
        ):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    plans = {s.name: StudyPlan(s, options) for s in chosen}
    store_path = out / "results.sqlite"
    checkpoints = Checkpoints(directory=str(out / "checkpoints"), every_s=execution.checkpoint_every)
    with Store(store_path) as store:
        before = store.finished_keys()
    total, requested = SweepReport(total=0, skipped=0), set[str]()

    def sweep(configs: list[RunConfig], pool: ProcessPoolExecutor | None) -> None:
        report = run_sweep(
            configs,
            store_path,
            workers=execution.workers,
            progress=execution.progress,
            max_pack=execution.max_pack,
            checkpoints=checkpoints,
            executor=execution.executor,
            ray=execution.ray,
            pool=pool,
        )
        requested.update(config_key(c) for c in configs)
        total.total, total.skipped = len(requested), len(requested & before)
        total.ran += report.ran
        total.failed += report.failed
        total.seconds += report.seconds

    cache: dict[str, RunRecord] = {}  # stored runs never change: each round reads only the new ones

    def stored() -> dict[str, RunRecord]:
        with Store(store_path) as store:
            cache.update((r.key, r) for r in store.records(keys=store.finished_keys() - cache.keys()))
        return dict(cache)

    with worker_pool(execution.workers, execution.executor) as workers:  # one pool for every round
        # 1. learning-rate selection, round by round until no grid grows; the runs of studies that tune nothing
        #    (and so wait for nothing) share the first round
        sweep(
            [c for p in plans.values() for c in p.selection_configs()]
            + [c for p in plans.values() if not p.choices for c in p.budget_configs()],
            workers,
        )
        while grown := [p for p in [p for p in plans.values() if p.choices] if p.update(stored())]:
            sweep([c for p in grown for c in p.selection_configs()], workers)
        # 2. the final runs at the chosen rates, at budgets T and 2T; then, round by round, the settings under a
        #    verdict that is not settled at a larger budget (judged without figures while the cores wait; once
        #    more with them when nothing grows)
        sweep([c for p in plans.values() if p.choices for c in p.budget_configs()], workers)
        judged = {name: plan.judge(stored(), None) for name, plan in plans.items()}
        while any(grew for _, grew in judged.values()):
            sweep([c for name, plan in plans.items() if judged[name][1] for c in plan.budget_configs()], workers)
            everything = stored()
            judged = {name: plan.judge(everything, None) for name, plan in plans.items()}
    figdir = out / "figures"
    judged = {name: plan.judge(stored(), figdir) for name, plan in plans.items()}
    shutil.rmtree(out / "checkpoints" / "trunks", ignore_errors=True)  # every budget asked for is stored
    log(
        f"{total.total} runs: {total.skipped} already stored, {total.ran} ran now"
        + (f" in {total.seconds:.0f} s" if total.ran else "")
        + (f", {len(total.failed)} failed" if total.failed else "")
    )
    for config, error in total.failed:
        print(f"run failed: {config}\n{error}", file=sys.stderr)
    # 3. analysis: each study at its budget T, its verdicts settled over the budgets, its target checked at 2T
    everything = stored()
    results, records, setups = {}, {}, {}
    for s in chosen:
        plan = plans[s.name]
        result, _ = judged[s.name]
        result.fairness = plan.fairness(everything, figdir)
        results[s.name] = result
        records[s.name] = {
            role: [everything[k] for k in _keys(configs) if k in everything] for role, configs in plan.roles().items()
        }
        setups[s.name] = s.setup(options)
    index = write_report(out, chosen, results, records, setups, options, other)
    return index, results, not total.failed


def _keys(configs: list[RunConfig]) -> list[str]:
    return list(dict.fromkeys(config_key(c) for c in configs))
