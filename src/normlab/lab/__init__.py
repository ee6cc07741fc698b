"""The lab behind ``normlab compare``: re-test the folk claims about normalization on this machine.

data -> models -> train (one run) -> store (SQLite) -> studies (claims, configs, analysis) -> report (HTML).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .report import OUTCOME_ORDER, load_verdicts, write_report
from .packed import MAX_COPIES
from .runner import run_sweep
from .store import Store, config_key
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
    configs = {s.name: s.configs(options) for s in chosen}
    store_path = out / "results.sqlite"
    sweep = run_sweep([c for s in chosen for c in configs[s.name]], store_path, workers=workers, progress=progress,
                      max_pack=max_pack)  # fmt: skip
    log(f"{sweep.total} runs: {sweep.skipped} already stored, {sweep.ran} ran now" +
        (f" in {sweep.seconds:.0f} s" if sweep.ran else "") + (f", {len(sweep.failed)} failed" if sweep.failed else ""))
    for config, error in sweep.failed:
        print(f"run failed: {config}\n{error}", file=sys.stderr)
    results, records, setups = {}, {}, {}
    with Store(store_path) as store:
        for s in chosen:
            records[s.name] = store.records(s.name, keys=[config_key(c) for c in configs[s.name]])
            results[s.name] = checked_analysis(s, records[s.name], out / "figures", options)
            setups[s.name] = s.setup(options)
    index = write_report(out, chosen, results, records, setups, options, other)
    return index, results, not sweep.failed
