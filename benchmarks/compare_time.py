"""Time of the default `normlab compare`, per study, on this machine (a benchmark, not a test).

    python benchmarks/compare_time.py [--workers 2]

Each study runs alone into a fresh directory; prints wall seconds per study and the total.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from normlab.lab import STUDIES, Options, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {args.workers} workers")
    print("| study | runs | wall s |\n|---|---|---|")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, study in STUDIES.items():
            start = time.perf_counter()
            compare(f"{tmp}/{name}", [name], Options(), workers=args.workers, progress=False, log=lambda *_: None)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"| {name} | {len(study.configs(Options()))} | {seconds:.1f} |", flush=True)
    print(f"| **total** | | **{total:.1f}** |")


if __name__ == "__main__":
    main()
