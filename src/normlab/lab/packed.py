"""Train many runs of the lab's ConvNet at once: K independent nets packed side by side in one model.

Small nets at small batches are bound by per-operation overhead on CPU, not arithmetic, so one model doing the work
of K runs is K times fewer operations. Packing is exact by construction: run k owns channels ``k*C .. (k+1)*C - 1``
of every layer; convolutions are grouped (``groups=K``), so no channel sees another run's channels; each norm's
packed form (``registry.create_packed_norm``) keeps per-run statistics (BN per channel over the run's own batch, GN
per run's groups); the head is a batched matmul; each run draws its own batches from its own generator and starts
from the initialization it gets alone (same seed, same constructor). The loss is the sum of the runs' mean losses,
so each run's gradient is its own, and the optimizer (SGD with momentum and weight decay, elementwise) takes
per-run learning rates and decays. A run that diverges stops learning (its learning rate becomes 0), as alone.

Why grouped convolutions rather than ``torch.func`` (``stack_module_state`` + ``vmap``): measured on one core
(MNIST-1D, 4-block 1-d CNN, 16 nets), grouped convolutions ran 1670 (BN) to 3240 (no norm) model-steps/s at batch 2
against 950 to 2290 for vmap, and one net alone 190 to 460; at batch 32 the two were within 30%. vmap would take
any module, but the norms that matter pack over channels, and the rest (``can_pack`` False) run alone.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import can_pack
from .config import ClassifyConfig, from_dict
from .train import (
    BatchOrder, RunOutput, _LossLog, _scale_invariance_error, build_classifier, classifier_data, classifier_steps,
    evaluate_classifier, lr_factor, record_point, watched_layer,
)  # fmt: skip

__all__ = ["MAX_COPIES", "pack_key", "plan_packs", "train_packed", "pack_state", "unpack_state"]

MAX_COPIES = 16
# Fields that may differ between the runs of one pack: the optimizer applies them per run, elementwise.
PER_RUN_FIELDS = ("seed", "lr", "weight_decay")


def pack_key(config: dict[str, Any]) -> str | None:
    """Runs with the same key train together; None for a run that trains alone (a probe that steps the model
    on its own, or a norm that does not pack)."""
    if config.get("task") != "classify":
        return None
    c = from_dict(config)
    if c.grad_predictiveness or c.record_batch_stats:
        return None
    spatial = 2 if c.data in ("digits", "cifar10", "mnist") else 1
    if c.norm != "meanonly":
        try:
            if not can_pack(c.norm, spatial):
                return None
        except ValueError:
            return None
    shared = {k: v for k, v in config.items() if k not in PER_RUN_FIELDS}
    return json.dumps(shared, sort_keys=True)


def plan_packs(configs: list[dict[str, Any]], max_copies: int = MAX_COPIES) -> list[list[dict[str, Any]]]:
    """Split ``configs`` into work items: packs of up to ``max_copies`` runs that share a key, and single runs.
    A group larger than ``max_copies`` is split into near-equal packs."""
    groups: dict[str, list[dict]] = {}
    items: list[list[dict]] = []
    for config in configs:
        key = pack_key(config)
        if key is None:
            items.append([config])
        else:
            groups.setdefault(key, []).append(config)
    for group in groups.values():
        count = -(-len(group) // max_copies)
        size = -(-len(group) // count)
        items += [group[i : i + size] for i in range(0, len(group), size)]
    return items


def _pack_axis(single: torch.Size, packed: torch.Size, copies: int) -> int | None:
    """The axis along which ``copies`` tensors of shape ``single`` concatenate to ``packed``; None if shared."""
    if single == packed:
        return None
    axes = [a for a, (s, p) in enumerate(zip(single, packed)) if s != p]
    if len(single) != len(packed) or len(axes) != 1 or packed[axes[0]] != copies * single[axes[0]]:
        raise ValueError(f"cannot pack tensors of shape {tuple(single)} into {tuple(packed)}")
    return axes[0]


def pack_state(models: list[nn.Module], packed: nn.Module) -> dict[str, int | None]:
    """Copy ``models``' state into ``packed`` (each tensor the models' tensors concatenated); returns each entry's
    pack axis. A tensor the models share (a step counter) must be equal in all of them; a shared parameter cannot
    be packed (ValueError)."""
    states = [m.state_dict() for m in models]
    params = dict(packed.named_parameters())
    axes: dict[str, int | None] = {}
    with torch.no_grad():
        for key, target in packed.state_dict().items():
            parts = [s[key] for s in states]
            axis = _pack_axis(parts[0].shape, target.shape, len(models))
            if axis is None:
                if key in params:
                    raise ValueError(f"parameter {key} is shared by the packed runs")
                if any(not torch.equal(parts[0], p) for p in parts[1:]):
                    raise ValueError(f"buffer {key} differs between the runs and cannot be shared")
                target.copy_(parts[0])
            else:
                target.copy_(torch.cat(parts, dim=axis))
            axes[key] = axis
    return axes


def unpack_state(packed: nn.Module, models: list[nn.Module]) -> None:
    """The inverse of :func:`pack_state`: load each model's slice of ``packed``'s state into it."""
    packed_state = packed.state_dict()
    for k, model in enumerate(models):
        state = {}
        for key, single in model.state_dict().items():
            axis = _pack_axis(single.shape, packed_state[key].shape, len(models))
            state[key] = packed_state[key] if axis is None else packed_state[key].chunk(len(models), dim=axis)[k]
        model.load_state_dict(state)


class PackedSGD:
    """``torch.optim.SGD`` (momentum, weight decay, no dampening or Nesterov) with a learning rate and weight decay
    per packed run, broadcast along each tensor's pack axis."""

    def __init__(self, packed: nn.Module, axes: dict[str, int | None], copies: int, momentum: float) -> None:
        self.params = [(p, axes[name]) for name, p in packed.named_parameters()]
        self.copies, self.momentum = copies, momentum
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    def _per_run(self, values: Tensor, p: Tensor, axis: int) -> Tensor:
        shape = [1] * p.dim()
        shape[axis] = -1
        return values.repeat_interleave(p.shape[axis] // self.copies).view(shape)

    @torch.no_grad()
    def step(self, lrs: list[float], decays: list[float]) -> None:
        for i, (p, axis) in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if any(decays):
                grad = grad + self._per_run(torch.tensor(decays, dtype=p.dtype, device=p.device), p, axis) * p
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = grad.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            p.sub_(self._per_run(torch.tensor(lrs, dtype=p.dtype, device=p.device), p, axis) * grad)

    def zero_grad(self) -> None:
        for p, _ in self.params:
            p.grad = None


def train_packed(configs: list[dict[str, Any]]) -> list[RunOutput]:
    """Train the runs ``configs`` (one :func:`pack_key`) together; one (metrics, curves) per run, each what the run
    gives alone up to float rounding."""
    cs: list[ClassifyConfig] = [from_dict(c) for c in configs]  # type: ignore[misc]
    if len({pack_key(c) for c in configs}) != 1 or pack_key(configs[0]) is None:
        raise ValueError("train_packed: the runs must share one pack key")
    c0, k = cs[0], len(cs)
    device = torch.device(c0.device)
    data = classifier_data(c0)
    singles = []
    for c in cs:
        torch.manual_seed(c.seed)
        singles.append(build_classifier(c, data))
    metrics: list[dict[str, float]] = [{} for _ in cs]
    for m, c, model in zip(metrics, cs, singles):
        if c.scale_invariance:
            m["scale_invariance_error"] = _scale_invariance_error(model, watched_layer(model), data.x_train[:64])
    packed = build_classifier(c0, data, copies=k)
    axes = pack_state(singles, packed)
    packed.to(device)
    opt = PackedSGD(packed, axes, k, c0.momentum)
    steps = classifier_steps(c0, data)
    every = max(1, steps // c0.points)
    orders = [BatchOrder(c, data.y_train) for c in cs]
    logs = [_LossLog() for _ in cs]
    curves = [{"step": [], "loss": [], "weight_norm": [], "effective_lr": [], "grad_pred": []} for _ in cs]
    alive = [True] * k
    in_shape = data.x_train.shape[1:]
    for step in range(steps):
        idx = torch.stack([o.next() for o in orders], dim=1)  # (B, K)
        x = data.x_train[idx].reshape(idx.shape[0], k * in_shape[0], *in_shape[1:]).to(device)
        y = data.y_train[idx].to(device)
        losses = F.cross_entropy(packed(x).transpose(1, 2), y, reduction="none").mean(0)  # (K,) each run's mean
        live = [i for i in range(k) if alive[i]]
        opt.zero_grad()
        losses[live].sum().backward()
        lrs = [c.lr * lr_factor(c.lr_schedule, step, steps) if alive[i] else 0.0 for i, c in enumerate(cs)]
        opt.step(lrs, [c.weight_decay for c in cs])
        values = losses.detach().tolist()
        for i in live:
            if logs[i].add(torch.tensor(values[i])):
                metrics[i]["diverged"] = 1.0
                alive[i] = False
        if not any(alive):
            break
        if step % every == 0 or step == steps - 1:
            w2 = watched_layer(packed).weight.detach().reshape(k, -1).square().sum(1).tolist()
            for i in live:
                if alive[i]:
                    record_point(curves[i], step, logs[i].flush(), w2[i], lrs[i])
    unpack_state(packed, singles)
    outputs = []
    for m, c, model, curve in zip(metrics, cs, singles, curves):
        m.setdefault("diverged", 0.0)
        outputs.append(evaluate_classifier(model.to(device), c, data, m, curve))
    return outputs
