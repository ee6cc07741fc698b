"""normlab's RMSNorm, with its compiled CPU kernel and on its pure-ATen fallback, against torch's LayerNorm at the
same shape, forward + backward (issue 22's goal: RMSNorm at most 1.5x LayerNorm).

    python benchmarks/rms_kernel_bench.py [--rounds 7] [--repeats 20] [--threads 1 2] [--markdown]

Each round times LayerNorm, RMSNorm (kernel) and RMSNorm (fallback, ``NORMLAB_NO_KERNELS=1``) one after the other,
each the median of ``--repeats`` calls (x8 for the small shape); the table gives the best round of each, as wall time
and as process CPU time (all threads together: on a shared machine the least noisy measure of the work done), and
the ratios of the best rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch

import normlab.nn as nl
from normlab.functional import _kernels

SHAPES = [(64, (32, 64, 64)), (768, (16, 256, 768))]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _seconds(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) of ``module(x).backward(grad)``, after 3 warm-up calls."""
    wall, cpu = [], []
    for i in range(repeats + 3):
        xi = x.detach().requires_grad_(True)
        w0, c0 = time.perf_counter(), time.process_time()
        module(xi).backward(grad)
        if i >= 3:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _use_kernels(enabled: bool) -> None:
    """Turn normlab's compiled kernels on or off for the following calls (``NORMLAB_NO_KERNELS``)."""
    if enabled:
        os.environ.pop(_kernels.DISABLE_ENV, None)
    else:
        os.environ[_kernels.DISABLE_ENV] = "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(
        f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}, kernel: {_kernels.rms_norm_kernel()}"
    )
    header = (
        "| shape | dtype | threads | LayerNorm ms | RMSNorm kernel ms | fallback ms | kernel/LN wall "
        "| fallback/LN wall | kernel/LN cpu | fallback/LN cpu |"
    )
    if args.markdown:
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
    torch.manual_seed(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dim, shape in SHAPES:
            for dtype_name, dtype in DTYPES.items():
                x = torch.randn(shape).to(dtype)
                grad = torch.randn(shape).to(dtype)
                layer, rms = torch.nn.LayerNorm(dim).to(dtype), nl.RMSNorm(dim).to(dtype)
                repeats = args.repeats * (8 if dim == 64 else 1)
                runs: dict[str, list[tuple[float, float]]] = {"ln": [], "kernel": [], "fallback": []}
                for _ in range(args.rounds):
                    runs["ln"].append(_seconds(layer, x, grad, repeats))
                    for name, enabled in (("kernel", True), ("fallback", False)):
                        _use_kernels(enabled)
                        runs[name].append(_seconds(rms, x, grad, repeats))
                    _use_kernels(True)
                wall = {k: min(w for w, _ in v) for k, v in runs.items()}
                cpu = {k: min(c for _, c in v) for k, v in runs.items()}
                cells = [
                    f"{wall['ln'] * 1e3:.3f}",
                    f"{wall['kernel'] * 1e3:.3f}",
                    f"{wall['fallback'] * 1e3:.3f}",
                    f"{wall['kernel'] / wall['ln']:.2f}",
                    f"{wall['fallback'] / wall['ln']:.2f}",
                    f"{cpu['kernel'] / cpu['ln']:.2f}",
                    f"{cpu['fallback'] / cpu['ln']:.2f}",
                ]
                if args.markdown:
                    print(f"| {shape} | {dtype_name} | {threads} | " + " | ".join(cells) + " |")
                else:
                    print(f"{str(shape):16s} {dtype_name:9s} {threads} thr  " + "  ".join(cells))


if __name__ == "__main__":
    main()
