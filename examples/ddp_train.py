"""Train a small CNN with DistributedDataParallel + normlab SyncBatchNorm, on CPU with gloo.

    torchrun --nproc_per_node 2 examples/ddp_train.py [--steps 60] [--batch 16]

Each rank sees its own shard of MNIST-1D (generated offline); SyncBatchNorm makes BN's statistics those of the
global batch (batch x ranks), so the model trains as it would on one process with the whole batch.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import normlab.nn as nl
from normlab.lab.training.data import mnist1d
from normlab.lab.training.models import ConvNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16, help="examples per rank per step")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = mnist1d()
    model = nl.SyncBatchNorm.convert_sync_batchnorm(ConvNet(1, 10, 1, norm="batch"))
    model = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    shard = torch.arange(rank, len(data.x_train), world)  # each rank its own examples
    g = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        idx = shard[torch.randint(0, len(shard), (args.batch,), generator=g)]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(-1) == data.y_test).float().mean().item()
    # Buffers are kept identical on every rank: check it, then report.
    means = [torch.empty_like(model.module.features[1].running_mean) for _ in range(world)]
    dist.all_gather(means, model.module.features[1].running_mean)
    same = all(torch.allclose(m, means[0]) for m in means)
    if rank == 0:
        print(
            f"ranks {world}, global batch {args.batch * world}: test accuracy {acc:.3f}, running stats equal "
            f"on every rank: {same}",
            flush=True,
        )
    # DDP's reducer must go before the process group it talks to (tearing them down the other way round hung
    # about one run in two with gloo).
    dist.barrier()
    del model, opt
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
