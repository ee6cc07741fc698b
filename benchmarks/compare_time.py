"""Time of the default `normlab compare` on this machine, and what each study and each part of it costs (a
benchmark, not a test).

    python benchmarks/compare_time.py [--workers 2] [--out DIR] [--first-seed N]

Runs the default compare once, as a user would (all studies, one worker process per core, one thread each), and
prints the total wall time, then per study the compute time (the sum of its runs' seconds on one core, a work item's
time shared by its runs) of each part: learning-rate selection, the final runs (budget T), the longer budgets (2T
and more; a run's budgets train as one trajectory, so the split between T and 2T is even by construction), and the
final runs at rates they could not hold (lowered, trained again); then each study's training check and verdict
counts. The run's size in reference steps (its compute over the machine's mean reference step, measured before and
after) compares runs made while a shared host ran at different speeds. With DIR holding a finished run, only the
report is rebuilt: use a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from normlab.lab import STUDIES, Options, compare
from normlab.lab.judging.report import outcome_counts
from normlab.lab.sweep.runner import default_workers

ROLES = ("selection", "final", "longer budgets", "unheld rates")


def reference_step_ms(rounds: int = 5, steps: int = 40) -> float:
    """The machine's speed at the time of a run: the best mean of ``rounds`` x ``steps`` training steps of the
    sequence study's LayerNorm language model on one thread, in ms (CPU time). Timings of two sessions compare
    only as far as these agree: a shared host's speed drifts (13.2-14.3 ms on 2026-12-07 morning, 16-18 in the
    afternoon, the same code)."""
    import torch

    from normlab.lab.config import make_config
    from normlab.lab.training.train import CharLMTraining

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = make_config(
            "char_lm", study="sequence", norm="layer", seed=0, batch_size=32, seq_len=64, steps=400, lr_schedule="wsd"
        )
        training = CharLMTraining(config)
        for step in range(20):
            training.step(step, [0], False)
        best = float("inf")
        for r in range(rounds):
            begin = time.process_time()
            for step in range(20 + steps * r, 20 + steps * (r + 1)):
                training.step(step, [0], False)
            best = min(best, (time.process_time() - begin) / steps * 1e3)
        return best
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--out", default=None)
    parser.add_argument("--first-seed", type=int, default=0, help="as normlab compare's (seed_stability's second run)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="normlab-compare-")
    before = reference_step_ms()
    start = time.perf_counter()
    options = Options(first_seed=args.first_seed)
    _, results, _ = compare(out, options=options, workers=args.workers, progress=False, log=lambda *_: None)
    wall = time.perf_counter() - start
    after = reference_step_ms()
    runs = json.loads((Path(out) / "results.json").read_text())["runs"]
    cost = {
        (name, role): [r["seconds"] for r in runs if r["study"] == name and r["role"] == role]
        for name in STUDIES
        for role in ROLES
    }
    total = sum(sum(v) for v in cost.values())
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {args.workers} workers: {wall:.0f} s wall ({out})")
    print(f"# machine speed (reference_step_ms): {before:.1f} ms before, {after:.1f} ms after")
    size = total / ((before + after) / 2e3) / 1e3
    print(f"# the run's size: {total:.0f} s of compute = {size:.0f} thousand reference steps (runs compare by this)")
    print("| study | selection runs, s | final runs (T), s | longer budgets, s | unheld rates, s | compute s | share |")
    print("|---|---|---|---|---|---|---|")
    for name in STUDIES:
        cells = [f"{len(cost[(name, r)])}, {sum(cost[(name, r)]):.0f}" for r in ROLES]
        study_total = sum(sum(cost[(name, r)]) for r in ROLES)
        print(f"| {name} | " + " | ".join(cells) + f" | {study_total:.0f} | {100 * study_total / total:.0f}% |")
    parts = [
        f"{len([s for (n, r), v in cost.items() if r == role for s in v])}, "
        f"{sum(sum(v) for (n, r), v in cost.items() if r == role):.0f}"
        for role in ROLES
    ]
    print("| **total** | " + " | ".join(parts) + f" | **{total:.0f}** | |")
    print("\n| study | target met at 2T | verdicts | settled at (T, 2T, 4T, 8T) |\n|---|---|---|---|")
    for name, result in results.items():
        t = result.training
        counts = ", ".join(f"{o.value} {n}" for o, n in outcome_counts(result.verdicts).items() if n)
        settled = [sum(v.settled_at == d for v in result.verdicts) for d in range(4)]
        print(f"| {name} | {'yes' if t.met else 'NO'} ({t.best}) | {counts} | {', '.join(map(str, settled))} |")


if __name__ == "__main__":
    main()
