"""One lab run split over N gloo ranks on this machine: data-parallel training of the lab's CNN.

Every step draws one global batch; rank r trains on its slice (global / N examples) and DDP averages gradients.
``sync=True`` swaps BatchNorm for :class:`normlab.nn.SyncBatchNorm` (statistics of the whole global batch);
otherwise each rank's BatchNorm sees only its own slice, the Group Norm paper's multi-GPU setting.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from typing import Any

import torch
import torch.multiprocessing as mp

from .train import RunOutput


def run_distributed(config: dict[str, Any]) -> RunOutput:
    nproc = config["nproc"]
    if config["global_batch"] % nproc:
        raise ValueError(f"global_batch ({config['global_batch']}) must be divisible by nproc ({nproc})")
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(nproc, tmp, config), nprocs=nproc, join=True, start_method="spawn")
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

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=nproc,
                            timeout=datetime.timedelta(seconds=300))  # fmt: skip
    try:
        torch.manual_seed(config["seed"])  # the same initial weights on every rank
        data = load_images(config["data"], config.get("data_path"))
        model = ConvNet(data.in_channels, data.num_classes, data.spatial_dims, config["norm"],
                        config.get("width", 32), config.get("depth", 3))  # fmt: skip
        if config.get("sync"):
            model = nl.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DDP(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=config["lr"], momentum=0.9)
        g = torch.Generator().manual_seed(config["seed"])  # every rank draws the same global batch
        per_rank = config["global_batch"] // nproc
        steps = config.get("steps") or config["epochs"] * math.ceil(len(data.x_train) / config["global_batch"])
        curves: dict[str, list[float]] = {"step": [], "loss": []}
        every = max(1, steps // 30)
        for step in range(steps):
            batch = torch.randint(0, len(data.x_train), (config["global_batch"],), generator=g)
            idx = batch[rank * per_rank : (rank + 1) * per_rank]
            loss = F.cross_entropy(ddp(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rank == 0 and (step % every == 0 or step == steps - 1):
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
