"""Time of the default `normlab compare` on this machine, and what each study costs (a benchmark, not a test).

    python benchmarks/compare_time.py [--workers 2] [--out DIR]

Runs the default compare once, as a user would (all studies, 2 worker processes, one thread each), and prints the
total wall time, then each study's compute time: the sum of its runs' seconds on one core (a pack's time shared by
its runs), and its share of the total. With DIR holding a finished run, only the report is rebuilt: use a new one.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from normlab.lab import STUDIES, Options, compare
from normlab.lab.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="normlab-compare-")
    start = time.perf_counter()
    compare(out, options=Options(), workers=args.workers, progress=False, log=lambda *_: None)
    wall = time.perf_counter() - start
    with Store(f"{out}/results.sqlite") as store:
        records = store.records()
    compute = {name: sum(r.seconds for r in records if r.study == name) for name in STUDIES}
    total = sum(compute.values())
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {args.workers} workers: {wall:.0f} s wall")
    print("| study | runs | compute s (one core) | share |\n|---|---|---|---|")
    for name, study in STUDIES.items():
        runs = len(study.configs(Options()))
        print(f"| {name} | {runs} | {compute[name]:.0f} | {100 * compute[name] / total:.0f}% |")
    print(f"| **total** | {len(records)} | **{total:.0f}** | |")


if __name__ == "__main__":
    main()
