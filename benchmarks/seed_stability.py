"""Do the verdicts of the default `normlab compare` survive a change of seeds? (a benchmark, not a test)

    python benchmarks/seed_stability.py [--out DIR] [--first DIR] [--second-seed 1000] [--workers N]

Runs the default compare twice, from seed 0 and from ``--second-seed`` (disjoint seed sets), the second with
``--against`` the first, and prints every verdict that differs, then the headline comparisons with the budget each
settled at in each run. The goals: no claim reproduced in one run and contradicted in the other ('flip'); each
headline keeps its outcome and settles at the same budget or one apart. Both runs stay in DIR (default
./seed-stability) for a look at the reports; ``--first`` names a finished default run from seed 0 to reuse (its
stored runs are not trained again, e.g. benchmarks/compare_time.py's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from normlab.lab import Options, compare
from normlab.lab.judging.report import load_verdicts, stability_rows
from normlab.lab.judging.verdicts import budget_name
from normlab.lab.studies import STUDIES
from normlab.lab.sweep.runner import default_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="seed-stability")
    parser.add_argument("--second-seed", type=int, default=1000)
    parser.add_argument("--first", default=None, help="a finished default run from seed 0 (default: DIR/seeds-from-0)")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    first = Path(args.first) if args.first else Path(args.out) / "seeds-from-0"
    second = Path(args.out) / f"seeds-from-{args.second_seed}"
    start = time.perf_counter()
    compare(first, options=Options(first_seed=0), workers=args.workers, progress=False, log=lambda *_: None)
    _, results, _ = compare(
        second,
        options=Options(first_seed=args.second_seed),
        workers=args.workers,
        progress=False,
        log=lambda *_: None,
        against=first,
    )
    rows = stability_rows(list(STUDIES.values()), results, load_verdicts(first))
    flips = [r for r in rows if r[4] == "flip"]
    changed = [r for r in rows if r[4] == "changed"]
    print(
        f"{len(rows)} verdicts judged in both runs ({time.perf_counter() - start:.0f} s): "
        f"{len(rows) - len(flips) - len(changed)} same, {len(changed)} changed, {len(flips)} flipped"
    )
    print(f"| study | claim | seeds from {args.second_seed} | seeds from 0 | change |\n|---|---|---|---|---|")
    for row in rows:
        if row[4] != "same":
            print("| " + " | ".join(row) + " |")
    print(f"\n| headline | seeds from {args.second_seed} | seeds from 0 |\n|---|---|---|")
    here, there = _settled(second), _settled(first)
    for study, prefix in HEADLINES:
        for (name, claim), outcome in here.items():
            if name == study and claim.startswith(prefix):
                print(f"| {study}: {claim} | {outcome} | {there.get((name, claim), '-')} |")


# (study, claim prefix): the comparisons the seeds' central claims rest on
HEADLINES = [
    ("batch-size", "group beats BN at batch 2"),
    ("online", "layer beats BN at batch size 1"),
    ("online", "group beats BN at batch size 1"),
    ("sequence", "LN reaches lower test bpc than batch"),
    ("batch-dependence", "BN is more accurate than WN alone"),
]


def _settled(run: Path) -> dict[tuple[str, str], str]:
    """(study, claim) -> "outcome, settled at B" from a run's results.json."""
    payload = json.loads((run / "results.json").read_text())
    return {
        (study, v["claim"]): f"{v['outcome']}, "
        + (f"settled at {budget_name(v['settled_at'])}" if v["settled_at"] is not None else "not settled")
        for study, vs in payload["verdicts"].items()
        for v in vs
    }


if __name__ == "__main__":
    main()
