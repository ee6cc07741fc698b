"""The lab behind ``normlab compare``: re-test the folk claims about normalization on this machine.

data -> models -> train (one run) -> store (SQLite) -> studies (claims, configs, analysis) -> fairness (each
setting's learning rate, the doubled-budget check) -> report (HTML).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .report import OUTCOME_ORDER, load_verdicts, write_report
from .packed import MAX_COPIES
from .fairness import StudyPlan
from .runner import SweepReport, run_sweep
from .store import RunRecord, Store, config_key
from .study import Options, checked_analysis
from .studies import STUDIES

__all__ = ["STUDIES", "Options", "compare", "OUTCOME_ORDER", "study_variants"]


def study_variants() -> set[str]:
    """The labels ``--norms`` accepts besides registry names: the studies' own variants."""
    return {label for study in STUDIES.values() for label in study.variants}


def preflight(out: Path, options: Options) -> None:
    """Check what the user gave before any run starts: ValueError with one clear line naming the path and what was
    expected. Reads only: a bad store or data directory is left as it was."""
    from .data import check_data
    from .store import check_store

    check_data(options.data)
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: expected a directory, found a file")
        existing = next((p for p in [out, *out.parents] if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--out {out}: {existing} is not writable")
        check_store(out / "results.sqlite")
    except OSError as err:
        raise ValueError(f"--out {out}: cannot be used ({err.strerror or err})") from None


def compare(
    out: str | Path = "normlab-results",
    studies: list[str] | None = None,
    options: Options = Options(),
    workers: int = 1,
    fresh: bool = False,
    progress: bool = True,
    log=print,
    against: str | Path | None = None,
    max_pack: int = MAX_COPIES,
) -> tuple[Path, dict, bool]:
    """Run the studies (skipping runs already stored in ``out``), analyze them and write the report; with
    ``against`` (another run's output directory, other seeds), the report compares the two runs' verdicts.

    Returns ``(index_path, {study: StudyResult}, all_runs_ok)``.
    """
    names = studies or list(STUDIES)
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise ValueError(f"unknown study {', '.join(unknown)}; available: {', '.join(STUDIES)}")
    out = Path(out)
    preflight(out, options)
    other = None if against is None else (Path(against), load_verdicts(Path(against)))  # fails before any run
    if fresh:
        for path in (out / "results.sqlite", out / "results.sqlite-wal", out / "results.sqlite-shm", out / "figures"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    chosen = [STUDIES[n] for n in names]
    plans = {s.name: StudyPlan(s, options) for s in chosen}
    store_path = out / "results.sqlite"
    with Store(store_path) as store:
        before = store.finished_keys()
    total, requested = SweepReport(total=0, skipped=0), set()

    def sweep(configs: list[dict]) -> None:
        report = run_sweep(configs, store_path, workers=workers, progress=progress, max_pack=max_pack)
        requested.update(config_key(c) for c in configs)
        total.total, total.skipped = len(requested), len(requested & before)
        total.ran += report.ran
        total.failed += report.failed
        total.seconds += report.seconds

    def stored() -> dict[str, RunRecord]:
        with Store(store_path) as store:
            return {r.key: r for r in store.records()}

    # 1. learning-rate selection, round by round until no grid grows; the runs of studies that tune nothing
    #    (and so wait for nothing) share the first round
    sweep([c for p in plans.values() for c in p.selection_configs()] +
          [c for p in plans.values() if not p.choices for c in p.final_configs() + p.check_configs()])
    while grown := [p for p in [p for p in plans.values() if p.choices] if p.update(stored())]:
        sweep([c for p in grown for c in p.selection_configs()])
    # 2. the final runs at the chosen rates, and each setting again at twice its budget
    sweep([c for p in plans.values() if p.choices for c in p.final_configs() + p.check_configs()])
    log(f"{total.total} runs: {total.skipped} already stored, {total.ran} ran now" +
        (f" in {total.seconds:.0f} s" if total.ran else "") + (f", {len(total.failed)} failed" if total.failed else ""))
    for config, error in total.failed:
        print(f"run failed: {config}\n{error}", file=sys.stderr)
    # 3. analysis: each study reads its final runs, marked by the doubled-budget check
    everything = stored()
    results, records, setups = {}, {}, {}
    for s in chosen:
        plan = plans[s.name]
        budgets = plan.judge_budgets(everything)
        final = plan.annotate([everything[k] for k in _keys(plan.final_configs()) if k in everything], budgets)
        results[s.name] = checked_analysis(s, final, out / "figures", options)
        results[s.name].fairness = plan.fairness(budgets, out / "figures")
        records[s.name] = {role: [everything[k] for k in _keys(configs) if k in everything]
                           for role, configs in plan.roles().items()}  # fmt: skip
        setups[s.name] = s.setup(options)
    index = write_report(out, chosen, results, records, setups, options, other)
    return index, results, not total.failed


def _keys(configs: list[dict]) -> list[str]:
    return list(dict.fromkeys(config_key(c) for c in configs))
