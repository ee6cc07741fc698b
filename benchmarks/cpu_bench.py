"""CPU benchmark: normlab.nn vs torch.nn, forward + backward, measured in the same run; prints ratios.

    python benchmarks/cpu_bench.py [--repeats 15] [--rounds 5] [--markdown] [--only SUBSTRING ...]

A ratio below 1 means normlab is faster. On CPU channels_last input ATen's statistics lose precision at large
means (see normlab.functional): normlab's training BatchNorm takes exact two-pass statistics on the channels_last
tensor and runs ATen's fused channels_last kernels for the rest; GroupNorm runs on a contiguous copy. The
backward here starts from ``.sum()``'s expanded gradient, which sends torch's channels_last BatchNorm backward
down its slow generic path; normlab hands ATen a channels_last gradient, so that row flatters normlab (see
benchmarks/RESULTS.md, 2026-12-02, for a channels_last upstream gradient).
"""

from __future__ import annotations

import argparse
import platform

import torch

import normlab.nn as nl
from timing import forward_backward_seconds

CASES = [
    ("BatchNorm2d", lambda m: m.BatchNorm2d(64), (32, 64, 28, 28), None),
    ("BatchNorm2d channels_last", lambda m: m.BatchNorm2d(64), (32, 64, 28, 28), torch.channels_last),
    ("BatchNorm1d", lambda m: m.BatchNorm1d(512), (256, 512), None),
    ("GroupNorm(32)", lambda m: m.GroupNorm(32, 64), (32, 64, 28, 28), None),
    ("GroupNorm(32) channels_last", lambda m: m.GroupNorm(32, 64), (32, 64, 28, 28), torch.channels_last),
    ("InstanceNorm2d", lambda m: m.InstanceNorm2d(64, affine=True), (32, 64, 28, 28), None),
    ("LayerNorm(768)", lambda m: m.LayerNorm(768), (16, 256, 768), None),
    ("RMSNorm(768)", lambda m: m.RMSNorm(768), (16, 256, 768), None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for benchmarks/RESULTS.md")
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING",
                        help="run only the cases whose name contains one of these (e.g. --only channels_last)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    header = "| case | shape | torch ms | normlab ms | normlab/torch |"
    print(header if args.markdown else f"{'case':32s} {'torch ms':>9s} {'normlab ms':>10s} {'ratio':>6s}")
    if args.markdown:
        print("|---|---|---|---|---|")
    for name, make, shape, fmt in CASES:
        if args.only and not any(part in name for part in args.only):
            continue
        x = torch.randn(shape)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        theirs, ours = make(torch.nn), make(nl)
        # Alternate rounds so both see the same machine noise; keep each one's best round.
        rounds = [(forward_backward_seconds(theirs, x, args.repeats), forward_backward_seconds(ours, x, args.repeats))
                  for _ in range(args.rounds)]
        t_torch, t_ours = min(r[0] for r in rounds), min(r[1] for r in rounds)
        ratio = t_ours / t_torch
        if args.markdown:
            print(f"| {name} | {tuple(shape)} | {t_torch * 1e3:.2f} | {t_ours * 1e3:.2f} | {ratio:.2f} |")
        else:
            print(f"{name:32s} {t_torch * 1e3:9.2f} {t_ours * 1e3:10.2f} {ratio:6.2f}")


if __name__ == "__main__":
    main()
