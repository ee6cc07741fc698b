"""What the lab measures of a run besides its training loss: probes taken during training (gradient
predictiveness, the batch statistics a norm sees, scale invariance) and after it (accuracy, with batch statistics,
under contrast changes, the spread of one example's output across batches). Each leaves the model as it found it."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..metrics import BATCH_MEAN_FLUCTUATION, BATCH_VAR_FLUCTUATION, OUTPUT_SPREAD, SCALE_INVARIANCE_ERROR
from .data import ImageData

__all__ = [
    "preserved_state",
    "BatchStatRecorder",
    "accuracy",
    "batch_stats_accuracy",
    "contrast_curve",
    OUTPUT_SPREAD,
    SCALE_INVARIANCE_ERROR,
    "gradient_predictiveness",
    "whole_norm",
]


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run probes (extra forwards, trial steps) without leaving a trace in parameters or running statistics."""
    saved = copy.deepcopy(model.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(saved)


RUNNING_MOMENTUM = 0.1  # nn.BatchNorm's default: the running statistics the batch statistics are measured against


class BatchStatRecorder:
    """Records the per-step batch mean and variance of a layer's input, per feature (PowerNorm's measurement)."""

    def __init__(self, module: nn.Module, channel_dim: int) -> None:
        self.means: list[Tensor] = []
        self.vars: list[Tensor] = []
        self.channel_dim = channel_dim
        self.enabled = True
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not (self.enabled and module.training):
            return
        x = args[0].detach().movedim(self.channel_dim, -1).reshape(-1, args[0].shape[self.channel_dim])
        var, mean = torch.var_mean(x.double(), dim=0)
        self.means.append(mean)
        self.vars.append(var)

    def state(self) -> dict[str, list[Tensor]]:
        return {"means": list(self.means), "vars": list(self.vars)}

    def load(self, state: dict[str, list[Tensor]]) -> None:
        self.means, self.vars = list(state["means"]), list(state["vars"])

    def fluctuation(self, skip: int, momentum: float = RUNNING_MOMENTUM) -> dict[str, float]:
        r"""How far each step's batch statistics stray from the running statistics BatchNorm keeps (an exponential
        average with ``momentum``, as ``nn.BatchNorm``'s), after ``skip`` steps (PowerNorm, Shen et al. 2020, Fig. 2:
        the distance between batch and running statistics), per feature, root mean square over the steps, averaged
        over features:

        .. math::
            \text{mean} = \overline{\operatorname{rms}_t\,(\mu_t - \hat\mu_{t-1}) / \hat\sigma_{t-1}},\qquad
            \text{var} = \overline{\operatorname{rms}_t\,(\sigma^2_t - \hat\sigma^2_{t-1}) / \hat\sigma^2_{t-1}}

        Measured against the running statistics, not the statistics' std over the whole run: a run's statistics drift
        as it trains, and that drift (more of it the longer the run) is not the step-to-step noise BN suffers from.
        The recorder keeps recording (a ladder's trunk goes on after a budget is measured). Empty with fewer than two
        steps after ``skip``."""
        if len(self.means) <= skip + 1:
            return {}
        means, variances = torch.stack(self.means[skip:]), torch.stack(self.vars[skip:])
        running_mean, running_var = means[0].clone(), variances[0].clone()
        mean_dev, var_dev = [], []
        for mean, var in zip(means[1:], variances[1:], strict=True):
            scale = running_var.clamp_min(1e-12)
            mean_dev.append((mean - running_mean) / scale.sqrt())
            var_dev.append((var - running_var) / scale)
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var, momentum)
        rms = [float(torch.stack(d).pow(2).mean(0).sqrt().mean()) for d in (mean_dev, var_dev)]
        return {BATCH_MEAN_FLUCTUATION: rms[0], BATCH_VAR_FLUCTUATION: rms[1]}


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return correct / len(x)


def batch_stats_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    """Accuracy in training mode on shuffled test batches: each batch normalized by its own statistics."""
    probe = copy.deepcopy(model).train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batch = max(batch, 2)
    correct = total = 0
    with torch.no_grad():
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            correct += int((probe(x[idx]).argmax(-1) == y[idx]).sum())
            total += len(idx)
    return correct / max(total, 1)


def contrast_curve(
    model: nn.Module, data: ImageData, strengths: list[float], seed: int, device: torch.device
) -> list[float]:
    """Accuracy when every test example gets its own contrast a and brightness b: x -> a*x + b.

    Strength s: log a ~ U(-s ln 5, s ln 5) and b ~ U(-2s, 2s) in standardized units.
    """
    g = torch.Generator().manual_seed(seed + 1000)
    n = len(data.x_test)
    shape = (n,) + (1,) * (data.x_test.dim() - 1)
    u, v = torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1
    x, y = data.x_test.to(device), data.y_test.to(device)
    u, v = u.to(device), v.to(device)
    return [accuracy(model, torch.exp(u * s * math.log(5)) * x + 2 * s * v, y) for s in strengths]


def output_spread(model: nn.Module, data: ImageData, batch: int, device: torch.device, compositions: int = 12) -> float:
    """Training-mode output for one fixed example inside random batches: std across batches / mean |logit|."""
    probe = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(7)
    example = data.x_test[:1]
    outputs = []
    with torch.no_grad():
        for _ in range(compositions):
            others = data.x_test[1 + torch.randperm(len(data.x_test) - 1, generator=g)[: batch - 1]]
            outputs.append(probe(torch.cat([example, others]).to(device))[0])
    out = torch.stack(outputs)
    return float(out.std(0).mean() / out.abs().mean().clamp_min(1e-12))


def scale_invariance_error(model: nn.Module, layer: nn.Module, x: Tensor, alpha: float = 3.0) -> float:
    """max |f(x; alpha*w) - f(x; w)| / max |f(x; w)| for the layer's weight, in training mode."""
    with preserved_state(model), torch.no_grad():
        base = model(x)
        cast(Tensor, layer.weight).mul_(alpha)
        scaled = model(x)
    return float((scaled - base).abs().max() / base.abs().max().clamp_min(1e-12))


def gradient_predictiveness(
    model: nn.Module,
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    step_sizes: Sequence[float | Tensor],
    run_norms: Callable[[list[Tensor]], Tensor],
) -> list[float]:
    """Santurkar et al. 2018: per run, ||grad L(w) - grad L(w - lr grad L(w))|| / ||grad L(w)|| on one batch, the
    model left as it was. ``loss_fn()`` is the batch's loss (summed over packed runs, so each run's gradient is its
    own), ``step_sizes`` each parameter's step (a rate, or a tensor of per-run rates broadcast over its slices),
    ``run_norms(tensors)`` each run's Euclidean norm of its slices of ``tensors`` (shape ``(runs,)``)."""
    with preserved_state(model):
        grads = torch.autograd.grad(loss_fn(), params)
        with torch.no_grad():
            for p, g, lr in zip(params, grads, step_sizes, strict=True):
                p.sub_(lr * g)
        moved = torch.autograd.grad(loss_fn(), params)
    diff = run_norms([a - b for a, b in zip(grads, moved, strict=True)])
    return (diff / run_norms(list(grads)).clamp_min(1e-12)).tolist()


def whole_norm(tensors: list[Tensor]) -> Tensor:
    """:func:`gradient_predictiveness`'s ``run_norms`` for one model trained alone: the norm of all its tensors."""
    return torch.tensor([math.sqrt(sum(float(t.square().sum()) for t in tensors))], dtype=torch.float64)
