"""One lab run split over N gloo ranks on this machine: data-parallel training of the lab's CNN.

Every step draws one global batch; rank r trains on its slice (global / N examples) and DDP averages gradients.
``sync=True`` swaps BatchNorm for :class:`normlab.nn.SyncBatchNorm` (statistics of the whole global batch);
otherwise each rank's BatchNorm sees only its own slice, the Group Norm paper's multi-GPU setting.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from typing import Any

import torch
import torch.multiprocessing as mp

from .config import RunOutput, from_dict


def run_distributed(config: dict[str, Any]) -> RunOutput:
    c = from_dict(config)
    if c.global_batch % c.nproc:
        raise ValueError(f"global_batch ({c.global_batch}) must be divisible by nproc ({c.nproc})")
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(c.nproc, tmp, config), nprocs=c.nproc, join=True, start_method="spawn")
        with open(os.path.join(tmp, "result.json")) as fh:
            result = json.load(fh)
    return result["metrics"], result["curves"]


def _rank_main(rank: int, nproc: int, tmp: str, config: dict[str, Any]) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from .. import nn as nl
    from .data import load_images
    from .models import ConvNet

    c = from_dict(config)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=nproc,
                            timeout=datetime.timedelta(seconds=300))  # fmt: skip
    try:
        torch.manual_seed(c.seed)  # the same initial weights on every rank, and as a single-process run
        data = load_images(c.data, c.data_path)
        model = ConvNet(data.in_channels, data.num_classes, data.spatial_dims, c.norm, c.width, c.depth)
        if c.sync:
            model = nl.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DDP(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=c.lr, momentum=c.momentum)
        g = torch.Generator().manual_seed(c.seed)  # every rank draws the same global batch
        per_rank = c.global_batch // nproc
        curves: dict[str, list[float]] = {"step": [], "loss": []}
        if c.record_losses:
            curves["global_loss"] = []
        every = max(1, c.steps // c.points)
        for step in range(c.steps):
            batch = torch.randint(0, len(data.x_train), (c.global_batch,), generator=g)
            idx = batch[rank * per_rank : (rank + 1) * per_rank]
            loss = F.cross_entropy(ddp(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if c.record_losses:  # the global batch's mean loss: equal slices, so the mean of the ranks' means
                total = loss.detach().clone()
                dist.all_reduce(total)
                curves["global_loss"].append(float(total) / nproc)
            if rank == 0 and (step % every == 0 or step == c.steps - 1):
                curves["step"].append(step)
                curves["loss"].append(float(loss.detach()))
        if rank == 0:
            model.eval()
            with torch.no_grad():
                acc = float((model(data.x_test).argmax(-1) == data.y_test).float().mean())
            with open(os.path.join(tmp, "result.json"), "w") as fh:
                json.dump({"metrics": {"test_acc": acc, "diverged": 0.0}, "curves": curves}, fh)
        dist.barrier()
        # DDP's reducer must go before the process group it talks to: the other order hung gloo teardown about one
        # run in two (measured with examples/ddp_train.py).
        del ddp, opt
    finally:
        dist.destroy_process_group()
