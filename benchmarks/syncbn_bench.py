"""SyncBatchNorm vs BatchNorm: time per training step (forward + backward) at N ranks, measured in the same run.

    python benchmarks/syncbn_bench.py [--ranks 2] [--device cpu|cuda]

On CPU the ranks are gloo processes on this machine; the ratio is SyncBN / BN per step on rank 0.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timing import forward_backward_seconds

import normlab.nn as nl

SHAPES = [(16, 64, 28, 28), (64, 256, 7, 7), (256, 512)]


def worker(rank, world, init_file, device):
    dist.init_process_group(
        "gloo" if device == "cpu" else "nccl",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    for shape in SHAPES:
        x = torch.randn(shape, device=device)
        bn = (nl.BatchNorm2d if len(shape) == 4 else nl.BatchNorm1d)(shape[1]).to(device)
        sync = nl.SyncBatchNorm(shape[1]).to(device)
        t_bn, t_sync = _timed(bn, x), _timed(sync, x)
        if rank == 0:
            print(
                f"| {tuple(shape)} per rank | {t_bn * 1e3:.2f} | {t_sync * 1e3:.2f} | {t_sync / t_bn:.2f} |", flush=True
            )
    dist.destroy_process_group()


def _timed(module, x, repeats=20):
    return forward_backward_seconds(module, x, repeats, before_each=dist.barrier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    print(f"# {args.ranks} ranks, {args.device}, torch {torch.__version__}, 1 thread per rank")
    print("| input | BN ms | SyncBN ms | SyncBN/BN |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(args.ranks, f"{tmp}/init", args.device), nprocs=args.ranks)


if __name__ == "__main__":
    main()
