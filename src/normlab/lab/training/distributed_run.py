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
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from ..config import DistributedConfig, RunOutput
from ..metrics import DIVERGED, TEST_ACC
from .loop import fit

if TYPE_CHECKING:
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from .data import ImageData


def run_distributed(c: DistributedConfig) -> RunOutput:
    if c.global_batch % c.nproc:
        raise ValueError(f"global_batch ({c.global_batch}) must be divisible by nproc ({c.nproc})")
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(c.nproc, tmp, c), nprocs=c.nproc, join=True, start_method="spawn")
        with open(os.path.join(tmp, "result.json")) as fh:
            result = json.load(fh)
    return result["metrics"], result["curves"]


class RankTraining:
    """One rank's part of a data-parallel run: its slice of each global batch, DDP averaging the gradients. Every
    rank draws the same global batches; the curve is rank 0's own loss at each point (its slice's), as the
    distributed study plots it."""

    runs = 1

    def __init__(
        self,
        c: DistributedConfig,
        rank: int,
        nproc: int,
        data: ImageData,
        model: nn.Module,
        ddp: DistributedDataParallel,
    ) -> None:
        self.c, self.rank, self.data, self.ddp, self.nproc = c, rank, data, ddp, nproc
        self.opt = torch.optim.SGD(ddp.parameters(), lr=c.lr, momentum=c.momentum)
        self.generator = torch.Generator().manual_seed(c.seed)  # every rank draws the same global batch
        self.per_rank = c.global_batch // nproc
        self.curves: dict[str, list[float]] = {"step": [], "loss": []}
        if c.record_losses:
            self.curves["global_loss"] = []
        self.last = math.nan

    def step(self, step: int, live: list[int], probe: bool) -> list[float]:
        import torch.distributed as dist
        import torch.nn.functional as F

        batch = torch.randint(0, len(self.data.x_train), (self.c.global_batch,), generator=self.generator)
        idx = batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        loss = F.cross_entropy(self.ddp(self.data.x_train[idx]), self.data.y_train[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.c.record_losses:  # the global batch's mean loss: equal slices, so the mean of the ranks' means
            total = loss.detach().clone()
            dist.all_reduce(total)
            self.curves["global_loss"].append(float(total) / self.nproc)
        self.last = float(loss.detach())
        return [self.last]

    def stop(self, run: int) -> None:
        pass  # never called: divergence is off (each rank sees only its slice, and all must take every step)

    def record(self, step: int, run: int, loss: float) -> None:
        if self.rank == 0:
            self.curves["step"].append(step)
            self.curves["loss"].append(self.last)

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("data-parallel runs do not checkpoint (each is a few seconds)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("data-parallel runs do not checkpoint")


def _rank_main(rank: int, nproc: int, tmp: str, c: DistributedConfig) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ...nn.batchnorm import SyncBatchNorm
    from .data import load_images
    from .models import ConvNet

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=nproc, timeout=datetime.timedelta(seconds=300)
    )
    try:
        torch.manual_seed(c.seed)  # the same initial weights on every rank, and as a single-process run
        data = load_images(c.data, c.data_path)
        model: nn.Module = ConvNet(data.in_channels, data.num_classes, data.spatial_dims, c.norm, c.width, c.depth)
        if c.sync:
            model = SyncBatchNorm.convert_sync_batchnorm(model)
        training = RankTraining(c, rank, nproc, data, model, DDP(model))
        fit(training, steps=c.steps, points=c.points, divergence=False)
        curves = training.curves
        if rank == 0:
            model.eval()
            with torch.no_grad():
                acc = float((model(data.x_test).argmax(-1) == data.y_test).float().mean())
            with open(os.path.join(tmp, "result.json"), "w") as fh:
                json.dump({"metrics": {TEST_ACC: acc, DIVERGED: 0.0}, "curves": curves}, fh)
        dist.barrier()
        # DDP's reducer must go before the process group it talks to: the other order hung gloo teardown about one
        # run in two (measured with examples/ddp_train.py).
        del training
    finally:
        dist.destroy_process_group()
