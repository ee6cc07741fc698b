"""Do the verdicts of the default `normlab compare` survive a change of seeds? (a benchmark, not a test)

    python benchmarks/seed_stability.py [--out DIR] [--second-seed 1000] [--workers 2]

Runs the default compare twice, from seed 0 and from ``--second-seed`` (disjoint seed sets), the second with
``--against`` the first, and prints every verdict that differs. The goal: no claim reproduced in one run and
contradicted in the other ('flip'). Both runs stay in DIR (default ./seed-stability) for a look at the reports.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from normlab.lab import Options, compare
from normlab.lab.report import load_verdicts, stability_rows
from normlab.lab.studies import STUDIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="seed-stability")
    parser.add_argument("--second-seed", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    first, second = Path(args.out) / "seeds-from-0", Path(args.out) / f"seeds-from-{args.second_seed}"
    start = time.perf_counter()
    compare(first, options=Options(first_seed=0), workers=args.workers, progress=False, log=lambda *_: None)
    _, results, _ = compare(second, options=Options(first_seed=args.second_seed), workers=args.workers,
                            progress=False, log=lambda *_: None, against=first)  # fmt: skip
    rows = stability_rows(list(STUDIES.values()), results, load_verdicts(first))
    flips = [r for r in rows if r[4] == "flip"]
    changed = [r for r in rows if r[4] == "changed"]
    print(f"{len(rows)} verdicts judged in both runs ({time.perf_counter() - start:.0f} s): "
          f"{len(rows) - len(flips) - len(changed)} same, {len(changed)} changed, {len(flips)} flipped")  # fmt: skip
    print(f"| study | claim | seeds from {args.second_seed} | seeds from 0 | change |\n|---|---|---|---|---|")
    for row in rows:
        if row[4] != "same":
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
