"""What `import normlab` adds to `import torch` (a benchmark, not a test).

    python benchmarks/import_time.py [--repeat 7]

Each import runs in a fresh interpreter, alternating the two, best of ``--repeat``; prints both and the difference.
On a loaded machine ``import torch`` alone varies by more than the goal, so the benchmark also reads Python's own
``-X importtime`` account of ``import normlab`` run after ``import torch`` in one interpreter: the cumulative time of
the ``normlab`` import, which is what normlab adds (the modules torch already loaded cost nothing). The goal: at most
0.1 s (nothing heavy, such as torch._dynamo, is imported until it is used).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def _seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def _normlab_cumulative() -> float:
    """Seconds of ``import normlab`` after ``import torch``, from ``-X importtime`` (cumulative, microseconds)."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import torch; import normlab"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in res.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == "normlab":
            return int(parts[1]) / 1e6
    raise RuntimeError("normlab's import line not found in -X importtime output")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch_only, with_normlab = [], []
    for _ in range(args.repeat):
        torch_only.append(_seconds("import torch"))
        with_normlab.append(_seconds("import torch, normlab"))
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, normlab; print('torch._dynamo' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        f"import torch: {min(torch_only):.3f} s; import torch, normlab: {min(with_normlab):.3f} s; "
        f"normlab adds {min(with_normlab) - min(torch_only):+.3f} s (best of {args.repeat}); "
        f"torch._dynamo loaded: {loaded}"
    )
    own = [_normlab_cumulative() for _ in range(args.repeat)]
    print(
        f"-X importtime, import normlab after import torch: {min(own):.3f} s best, "
        f"{sorted(own)[len(own) // 2]:.3f} s median of {args.repeat} (goal: at most 0.100 s)"
    )


if __name__ == "__main__":
    main()
