"""One run of the user's own model on the user's own data, its norms swapped for one method, on the lab's one loop.

Paired seeds: the run's seed is set before the model is built, and the swap builds only norm layers (no random
numbers drawn), so every method starts from the same weights in every layer it shares with the others, and draws
the same batches (epoch e is a permutation from a generator seeded with the run's seed and e). Measured besides the
metric: the mean seconds per training step (forward, backward, optimizer step; the first steps left out) and the
memory a step needs (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the parameters, gradients, optimizer state and
the activations saved for backward at one step). A method the model cannot train at a batch size (BatchNorm on a
single value per channel raises in torch) is a result, "fails at batch size B", not a crash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sized
from contextlib import nullcontext
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ...registry import canonical_name
from ...transform import param_groups, swap
from ..config import UserConfig
from ..metrics import DIVERGED, MEMORY_MB, STEP_SECONDS, TEST_ACC, TEST_LOSS, TRAIN_LOSS, VALID_ACC, VALID_LOSS
from .data import training_part
from .inputs import UserData, load_model, load_user_data
from .loop import Saver, Schedule, fit
from .models import NotApplicable

__all__ = ["SWAPPABLE", "norm_kinds", "build_user_model", "train_user", "training_split"]

SWAPPABLE = ("batch", "group", "layer", "instance", "rms")  # the kinds normlab.swap replaces
_TIMING_SKIP = 3  # first steps left out of the time per step (allocator and kernel warm-up)


def norm_kinds(model: nn.Module) -> list[str]:
    """The swappable kinds of norm layer in ``model`` (as :func:`normlab.swap` sees them)."""
    from ...transform import _SOURCES

    return [kind for kind in SWAPPABLE if any(isinstance(m, _SOURCES[kind]) for m in model.modules())]


def build_user_model(c: UserConfig) -> nn.Module:
    """The user's model with every norm of the kinds ``c.swap_from`` swapped for ``c.norm``."""
    model = load_model(c.model, c.model_args)
    for kind in c.swap_from:
        model, _ = swap(model, kind, canonical_name(c.norm), num_groups=c.num_groups)
    return model


def training_split(c: UserConfig, data: UserData) -> tuple[Subset | Any, Subset | Any]:
    """(the examples the run trains on, the examples it is scored on): with ``validation_fraction``, the last share
    of the training set is held out and scored (the test set is then not read)."""
    if not c.validation_fraction:
        return data.train, data.test
    n, keep = len(cast(Sized, data.train)), training_part(len(cast(Sized, data.train)), c.validation_fraction)
    return Subset(data.train, range(keep)), Subset(data.train, range(keep, n))


class Batches:
    """The run's batches, from position ``start`` on: epoch e is a permutation of the ``n`` examples from a
    generator seeded with (seed, e), cut into batches, the incomplete last one dropped. Stateless in between, so a
    resumed run (or a DataLoader that prefetches ahead) needs only the count of batches consumed."""

    def __init__(self, n: int, batch: int, seed: int, start: int = 0) -> None:
        self.n, self.batch, self.seed, self.start = n, batch, seed, start
        self.per_epoch = n // batch

    def __iter__(self) -> Iterator[list[int]]:
        position, epoch, order = self.start, -1, None
        while True:
            e, i = divmod(position, self.per_epoch)
            if e != epoch:
                epoch, order = (
                    e,
                    torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + e)),
                )
            yield cast(Tensor, order)[i * self.batch : (i + 1) * self.batch].tolist()  # drawn at the first batch
            position += 1


def _step_memory(model: nn.Module, opt: torch.optim.Optimizer, saved: int) -> float:
    """MiB of a training step on CPU: parameters, gradients, optimizer state, and ``saved`` bytes of activations."""
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in opt.state.values() for t in state.values() if isinstance(t, Tensor)]
    return (sum(t.numel() * t.element_size() for t in tensors) + saved) / 2**20


class UserTraining:
    """The user's model, optimizer (SGD with momentum or AdamW; no weight decay on norm parameters and biases),
    schedule and batches, stepped by :func:`normlab.lab.training.loop.fit`."""

    runs = 1

    def __init__(self, c: UserConfig, data: UserData, model: nn.Module) -> None:
        self.c, self.device = c, torch.device(c.device)
        self.layout = torch.channels_last if c.channels_last else torch.preserve_format
        # Module.to takes memory_format (torch._C._nn._parse_to reads it); torch's stubs of Module.to omit it
        self.model: nn.Module = model.to(self.device, memory_format=self.layout).train()  # type: ignore[call-overload]
        groups = param_groups(self.model, c.weight_decay)
        self.opt = (
            torch.optim.AdamW(groups, lr=c.lr)
            if c.optimizer == "adamw"
            else torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum)
        )
        self.train_set, self.scored = training_split(c, data)
        if len(self.train_set) < c.batch_size:
            raise NotApplicable(
                f"fails at batch size {c.batch_size}: the training set has {len(self.train_set)} examples"
            )
        self.loss_fn = data.loss_fn or F.cross_entropy
        per_epoch = len(self.train_set) // c.batch_size
        self.base_steps = max(1, round(c.budget * (c.steps or c.epochs * per_epoch)))
        self.schedule = Schedule(
            lr=c.lr,
            kind=c.lr_schedule,
            steps=self.base_steps * 2**c.doublings,
            warmup=round(c.budget * c.warmup),
            cooldown=c.cooldown,
        )
        self.curves: dict[str, list[float]] = {"step": [], "loss": [], "lr": []}
        self.consumed, self.timing, self.memory, self.first_loss = 0, [0.0, 0], math.nan, math.nan
        self.iterator: Iterator | None = None

    def _next_batch(self) -> tuple[Any, Any]:
        if self.iterator is None:  # from the position consumed so far: where a resumed run left off
            sampler = Batches(len(self.train_set), self.c.batch_size, self.c.seed, start=self.consumed)
            self.iterator = iter(
                DataLoader(
                    self.train_set,
                    batch_sampler=sampler,
                    num_workers=self.c.loader_workers,
                    pin_memory=self.device.type == "cuda",
                )
            )
        x, y = next(self.iterator)
        self.consumed += 1
        x = x.to(self.device, non_blocking=True)
        if self.c.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True) if isinstance(y, Tensor) else y

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.c.amp else nullcontext()

    def step(self, step: int, live: list[int], probe: bool) -> list[float]:
        x, y = self._next_batch()
        for group in self.opt.param_groups:
            group["lr"] = self.schedule.lr_at(step)
        first = math.isnan(self.first_loss)
        saved: list[int] = [0]

        def pack(t: Tensor) -> Tensor:  # counts the activations autograd keeps for backward (the first step)
            saved[0] += t.numel() * t.element_size()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if first else nullcontext()
        if first and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            with hooks, self._autocast():
                loss = self.loss_fn(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        except (RuntimeError, ValueError) as err:
            if first:  # the method cannot train this model at this batch size: a result, not a crash
                raise NotApplicable(f"fails at batch size {self.c.batch_size}: {str(err).splitlines()[0]}") from None
            raise
        self.opt.step()
        value = float(loss.detach())  # synchronizes a CUDA device, so the time below is the step's
        if self.consumed > _TIMING_SKIP:
            self.timing[0] += time.perf_counter() - start
            self.timing[1] += 1
        if first:
            self.first_loss = value
            self.memory = (
                torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.device.type == "cuda"
                else _step_memory(self.model, self.opt, saved[0])
            )
        return [value]

    def stop(self, run: int) -> None:
        pass

    def record(self, step: int, run: int, loss: float) -> None:
        self.curves["step"].append(step)
        self.curves["loss"].append(loss)
        self.curves["lr"].append(self.schedule.lr_at(step))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "curves": self.curves,
            "consumed": self.consumed,
            "timing": list(self.timing),
            "memory": self.memory,
            "first_loss": self.first_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.curves, self.consumed, self.timing = state["curves"], state["consumed"], list(state["timing"])
        self.memory, self.first_loss, self.iterator = state["memory"], state["first_loss"], None

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the scored examples (accuracy nan unless the task is classification)."""
        self.model.eval()
        loader = DataLoader(self.scored, batch_size=max(64, self.c.batch_size), num_workers=self.c.loader_workers)
        total = loss_sum = correct = 0.0
        for x, y in loader:
            x = x.to(self.device, memory_format=self.layout) if x.dim() == 4 else x.to(self.device)
            y = y.to(self.device) if isinstance(y, Tensor) else y
            with self._autocast():
                out = self.model(x)
                loss_sum += float(self.loss_fn(out, y)) * len(x)
            if self.loss_fn is F.cross_entropy:
                correct += float((out.argmax(-1) == y).sum())
            total += len(x)
        self.model.train()
        return loss_sum / max(total, 1), (correct / max(total, 1) if self.loss_fn is F.cross_entropy else math.nan)


def train_user(c: UserConfig, saver: Saver | None = None) -> tuple[dict[str, float], dict[str, list[float]]]:
    data = load_user_data(c.data)
    training = UserTraining(c, data, build_user_model(c))
    (diverged,) = fit(
        training,
        steps=training.schedule.steps,
        points=c.points,
        saver=saver,
        every=max(1, training.base_steps // c.points),
    )
    metrics: dict[str, float] = {
        DIVERGED: float(diverged),
        MEMORY_MB: training.memory,
        STEP_SECONDS: training.timing[0] / max(training.timing[1], 1),
    }
    loss_name, acc_name = (VALID_LOSS, VALID_ACC) if c.validation_fraction else (TEST_LOSS, TEST_ACC)
    if diverged:  # scored as the untrained model: its first loss, and chance where there are classes
        metrics[loss_name] = training.first_loss
        if data.classification:
            metrics[acc_name] = 1.0 / _classes(training.model, training.train_set, c)
        return metrics, training.curves
    loss, acc = training.evaluate()
    metrics[loss_name] = loss
    if data.classification:
        metrics[acc_name] = acc
    if not c.validation_fraction and training.curves["loss"]:
        metrics[TRAIN_LOSS] = training.curves["loss"][-1]
    return metrics, training.curves


def _classes(model: nn.Module, dataset: Dataset[Any], c: UserConfig) -> int:
    from .inputs import examples

    x, _ = examples(dataset, 2)
    with torch.no_grad():
        return int(model.eval()(x.to(c.device)).shape[-1])
