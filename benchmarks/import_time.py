"""What `import normlab` adds to `import torch` (a benchmark, not a test).

    python benchmarks/import_time.py [--repeat 7]

Each import runs in a fresh interpreter, alternating the two, best of ``--repeat``; prints both and the difference.
The goal: at most 0.1 s (nothing heavy, such as torch._dynamo, is imported until it is used).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch_only, with_normlab = [], []
    for _ in range(args.repeat):
        torch_only.append(_seconds("import torch"))
        with_normlab.append(_seconds("import torch, normlab"))
    loaded = subprocess.run([sys.executable, "-c", "import sys, normlab; print('torch._dynamo' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print(f"import torch: {min(torch_only):.3f} s; import torch, normlab: {min(with_normlab):.3f} s; "
          f"normlab adds {min(with_normlab) - min(torch_only):+.3f} s (best of {args.repeat}); "
          f"torch._dynamo loaded: {loaded}")


if __name__ == "__main__":
    main()
