"""Do the built-in studies give the same results on two versions of the training code? (a check, not a test)

    PYTHONPATH=OLD/src python benchmarks/loop_equivalence.py run --out before.json [--budget 0.05]
    python benchmarks/loop_equivalence.py run --out after.json [--budget 0.05]
    python benchmarks/loop_equivalence.py diff before.json after.json

``run`` trains every final run of every study (one seed, at ``--budget`` of its steps: every task, probe and pack
the studies use) with the normlab that Python imports, and writes each run's metrics and curves by configuration.
``diff`` compares two such files run by run: the count that are equal bit for bit, and the largest difference of
each that is not. Used to show that moving the studies onto one training loop left their results unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path


def run(out: str, budget: float, workers: int) -> None:
    import normlab
    from normlab.lab import STUDIES, Options, Store, StudyPlan, run_sweep  # the facade: the same before and after

    options = Options(seeds=1, budget=budget, nproc=2)
    configs = [c for s in STUDIES.values() for c in StudyPlan(s, options).final_configs()]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_sweep(configs, Path(tmp) / "r.sqlite", workers=workers, progress=True)
        with Store(Path(tmp) / "r.sqlite") as store:
            rows = {json.dumps(r.config, sort_keys=True): [r.status, r.metrics, r.curves] for r in store.records()}
    Path(out).write_text(json.dumps(rows, sort_keys=True))
    print(
        f"{len(rows)} runs ({len(report.failed)} failed) in {time.perf_counter() - start:.0f} s with {normlab.__file__}"
    )


def _difference(a, b) -> float:
    """0 when equal bit for bit (nan equal to nan), else the largest absolute difference (inf: shapes differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return math.inf
        return max((_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return 0.0 if a == b else abs(a - b)
    return 0.0 if a == b else math.inf


def diff(first: str, second: str) -> None:
    a, b = json.loads(Path(first).read_text()), json.loads(Path(second).read_text())
    common = sorted(set(a) & set(b))
    different = [(k, _difference(a[k], b[k])) for k in common]
    different = [(k, d) for k, d in different if d]
    print(
        f"{len(common)} runs in both ({len(a)} and {len(b)} in all): {len(common) - len(different)} equal bit for "
        f"bit, {len(different)} different"
    )
    for key, d in different:
        c = json.loads(key)
        print(f"  {c['study']} {c['task']} {c.get('norm')} {c.get('variant')}: largest difference {d:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("diff")
    p.add_argument("first")
    p.add_argument("second")
    args = parser.parse_args()
    if args.command == "run":
        run(args.out, args.budget, args.workers)
    else:
        diff(args.first, args.second)


if __name__ == "__main__":
    main()
