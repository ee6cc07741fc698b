"""CPU benchmark: every normlab.nn twin vs its torch.nn class, forward + backward, measured in the same run.

    python benchmarks/cpu_bench.py [--repeats 15] [--rounds 5] [--threads 1 0] [--dtypes float32 bfloat16]
                                   [--markdown] [--only SUBSTRING ...] [--no-rms-vs-layer | --rms-vs-layer-only]

The matrix: every twin (BatchNorm1d/2d, GroupNorm, InstanceNorm2d, LayerNorm, RMSNorm) x float32 / bfloat16 x
contiguous / channels_last (4-d inputs) x the lab's tiny sizes and a large size x one thread / all threads
(``--threads 0`` is torch's default count). The backward starts from a random upstream gradient in each module's
own output layout (as a following layer hands it back); the ``.sum()`` form, whose expanded gradient sends torch's
channels_last BatchNorm backward down a slow generic path, is kept as extra rows labelled ``.sum()``.

Each round times torch's module then normlab's (median of ``--repeats`` calls each, more for tiny inputs); the
ratio is the median over rounds of normlab / torch, so both see the same machine noise. Below 1: normlab is faster.
A last table times normlab's RMSNorm against torch's LayerNorm at the same shape (the goal: at most 1.5x).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import torch
from timing import forward_backward_seconds

import normlab.nn as nl

TINY, LARGE = "tiny", "large"
CASES = [  # name, factory (given torch.nn or normlab.nn), shape, size
    ("BatchNorm1d", lambda m: m.BatchNorm1d(32), (2, 32, 40), TINY),  # the lab's ConvNet1d, batch 2
    ("BatchNorm1d", lambda m: m.BatchNorm1d(512), (256, 512), LARGE),
    ("BatchNorm2d", lambda m: m.BatchNorm2d(32), (32, 32, 8, 8), TINY),  # the lab's ConvNet2d, batch 32
    ("BatchNorm2d", lambda m: m.BatchNorm2d(64), (32, 64, 28, 28), LARGE),
    ("GroupNorm(8, 32)", lambda m: m.GroupNorm(8, 32), (2, 32, 40), TINY),
    ("GroupNorm(32, 64)", lambda m: m.GroupNorm(32, 64), (32, 64, 28, 28), LARGE),
    ("InstanceNorm2d", lambda m: m.InstanceNorm2d(32, affine=True), (32, 32, 8, 8), TINY),
    ("InstanceNorm2d", lambda m: m.InstanceNorm2d(64, affine=True), (32, 64, 28, 28), LARGE),
    ("LayerNorm(64)", lambda m: m.LayerNorm(64), (32, 64, 64), TINY),  # the lab's char LM
    ("LayerNorm(768)", lambda m: m.LayerNorm(768), (16, 256, 768), LARGE),
    ("RMSNorm(64)", lambda m: m.RMSNorm(64), (32, 64, 64), TINY),
    ("RMSNorm(768)", lambda m: m.RMSNorm(768), (16, 256, 768), LARGE),
]
SUM_ROWS = ["BatchNorm2d", "GroupNorm(32, 64)"]  # large, channels_last, float32, also with .sum()'s gradient
RMS_VS_LAYER = [(64, (32, 64, 64)), (768, (16, 256, 768))]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _grad_like(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A random upstream gradient with the shape, dtype and memory layout of ``module(x)``."""
    with torch.no_grad():
        out = module(x)
    return torch.empty_like(out).copy_(torch.randn(out.shape))  # empty_like keeps out's strides


def _compare(theirs, ours, x, repeats: int, rounds: int, grad: bool) -> tuple[float, float, float]:
    """(torch seconds, normlab seconds, normlab/torch): medians over alternating rounds."""
    grads = (_grad_like(theirs, x), _grad_like(ours, x)) if grad else (None, None)
    times = [
        (
            forward_backward_seconds(theirs, x, repeats, grad=grads[0]),
            forward_backward_seconds(ours, x, repeats, grad=grads[1]),
        )
        for _ in range(rounds)
    ]
    ratio = statistics.median(o / t for t, o in times)
    return statistics.median(t for t, _ in times), statistics.median(o for _, o in times), ratio


def _rows(args):
    for threads in args.threads:
        for name, make, shape, size in CASES:
            layouts = ["contiguous", "channels_last"] if len(shape) == 4 else ["contiguous"]
            for dtype_name in args.dtypes:
                for layout in layouts:
                    yield threads, name, make, shape, size, dtype_name, layout, True
                    if layout == "channels_last" and size == LARGE and name in SUM_ROWS and dtype_name == "float32":
                        yield threads, name, make, shape, size, dtype_name, layout, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="calls per round for large inputs (x8 for tiny)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="torch threads; 0: torch's default")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables for benchmarks/RESULTS.md")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SUBSTRING",
        help="run only the rows whose 'case shape dtype layout' contains one of these",
    )
    parser.add_argument("--no-rms-vs-layer", action="store_true", help="skip the RMSNorm vs LayerNorm table")
    parser.add_argument(
        "--rms-vs-layer-only", action="store_true", help="skip the matrix: only the RMSNorm vs LayerNorm table"
    )
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    args.threads = [t or default_threads for t in args.threads]
    torch.manual_seed(0)
    print(
        f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{default_threads} default threads, torch {torch.__version__}"
    )
    if args.markdown and not args.rms_vs_layer_only:
        print("| case | shape | dtype | layout | threads | torch ms | normlab ms | normlab/torch |")
        print("|---|---|---|---|---|---|---|---|")
    for threads, name, make, shape, size, dtype_name, layout, grad in _rows(args):
        if args.rms_vs_layer_only:
            break
        label = f"{name} {shape} {dtype_name} {layout}" + ("" if grad else " .sum()")
        if args.only and not any(part in label for part in args.only):
            continue
        torch.set_num_threads(threads)
        dtype = DTYPES[dtype_name]
        x = torch.randn(shape).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        theirs, ours = make(torch.nn).to(dtype), make(nl).to(dtype)
        repeats = args.repeats * (8 if size == TINY else 1)
        t_torch, t_ours, ratio = _compare(theirs, ours, x, repeats, args.rounds, grad)
        case = name + ("" if grad else " .sum()")
        if args.markdown:
            print(
                f"| {case} | {tuple(shape)} | {dtype_name} | {layout} | {threads} | {t_torch * 1e3:.3f} | "
                f"{t_ours * 1e3:.3f} | {ratio:.2f} |"
            )
        else:
            print(
                f"{case:24s} {str(shape):18s} {dtype_name:9s} {layout:13s} {threads:2d} thr  "
                f"torch {t_torch * 1e3:8.3f} ms  normlab {t_ours * 1e3:8.3f} ms  {ratio:5.2f}"
            )
    if args.no_rms_vs_layer:
        return
    print("\n# normlab RMSNorm vs torch LayerNorm, same shape (goal: at most 1.5)")
    if args.markdown:
        print("| shape | dtype | threads | LayerNorm ms | RMSNorm ms | RMSNorm/LayerNorm |")
        print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dim, shape in RMS_VS_LAYER:
            for dtype_name in args.dtypes:
                dtype = DTYPES[dtype_name]
                x = torch.randn(shape).to(dtype)
                layer, rms = torch.nn.LayerNorm(dim).to(dtype), nl.RMSNorm(dim).to(dtype)
                repeats = args.repeats * (8 if dim == 64 else 1)
                t_layer, t_rms, ratio = _compare(layer, rms, x, repeats, args.rounds, True)
                if args.markdown:
                    print(
                        f"| {shape} | {dtype_name} | {threads} | {t_layer * 1e3:.3f} | {t_rms * 1e3:.3f} "
                        f"| {ratio:.2f} |"
                    )
                else:
                    print(
                        f"RMSNorm/LayerNorm {str(shape):16s} {dtype_name:9s} {threads:2d} thr  LayerNorm "
                        f"{t_layer * 1e3:8.3f} ms  RMSNorm {t_rms * 1e3:8.3f} ms  {ratio:5.2f}"
                    )


if __name__ == "__main__":
    main()
