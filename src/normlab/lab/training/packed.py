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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...registry import can_pack, canonical_name, conv_layer, get_method
from ..config import ClassifyConfig, RunConfig, as_dict, of_kind
from ..metrics import DIVERGED, SCALE_INVARIANCE_ERROR
from ..store import config_key
from .data import ImageData
from .fused_step import FusedLayer, fused_loss_and_grads, fused_plan
from .loop import Saver, Trunk, fit_ladder
from .models import MATMUL_MIN_BATCH, ConvNet, SplitNorm, pack_size, uses_weight_norm
from .probes import gradient_predictiveness, scale_invariance_error
from .train import (
    BatchOrder,
    RunOutput,
    base_steps,
    build_classifier,
    build_packed_classifier,
    classifier_data,
    classifier_schedule,
    curve_every,
    evaluate_classifier,
    ladders,
    new_classifier_curves,
    record_point,
    watched_layer,
)

__all__ = [
    "MAX_COPIES",
    "pack_key",
    "plan_packs",
    "train_packed",
    "pack_state",
    "unpack_state",
    "split_packed",
    "join_packed",
    "PackTrunk",
]

MAX_COPIES = 64  # the most runs a pack holds; below it, models.pack_size sizes packs by batch, as measured
# Fields that may differ between the runs of one pack: the optimizer applies them per run, elementwise, each run
# draws its own batches, and runs of different norms each get their part of every norm layer.
PER_RUN_FIELDS = ("seed", "lr", "weight_decay", "stream", "chunk", "norm", "variant", "norm_options")
# ... and ``doublings``: a run's budgets branch off one trajectory, the same budgets for every run of a pack


def pack_key(c: RunConfig) -> str | None:
    """Runs with the same key train together; None for a run that trains alone (a recorder hooked on one
    model's layer, or a norm that does not pack)."""
    if not isinstance(c, ClassifyConfig) or c.record_batch_stats:
        return None
    try:  # the ConvNet's maps have spatial dims; whether a norm packs, and its conv kind, differ only for vectors
        if not can_pack(c.norm, spatial_dims=1):
            return None
        conv = "plain" if conv_layer(c.norm, 1) is None else canonical_name(c.norm)
        activation = "fused" if get_method(c.norm).fused_activation else "relu"
    except ValueError:
        return None
    shared = {k: v for k, v in as_dict(c).items() if k not in (*PER_RUN_FIELDS, "doublings")}
    shared["weight_norm"] = uses_weight_norm(c.norm, c.weight_norm)  # the recipe of mean-only BN adds WN
    return json.dumps({**shared, "conv": conv, "activation": activation}, sort_keys=True)


def _run_order(config: ClassifyConfig) -> str:
    return json.dumps([config.norm, config.norm_options, config.variant], sort_keys=True)


def plan_packs(configs: list[RunConfig], max_copies: int = MAX_COPIES) -> list[list[RunConfig]]:
    """Split ``configs`` into work items: packs of runs that share a key (at most ``max_copies``, and
    :func:`~normlab.lab.training.models.pack_size` at their batch size), and single runs.
    A run asked for at several budgets (a "wsd" schedule: :func:`~normlab.lab.training.train.can_branch`) is one ladder,
    its budgets in one item; ladders pack with ladders at the same budgets. A group larger than ``max_copies`` is
    split into near-equal packs; the runs of one norm stay together."""
    groups: dict[str, list[list[ClassifyConfig]]] = {}
    items: list[list[RunConfig]] = []
    for ladder in ladders(configs):
        ladder.sort(key=lambda c: getattr(c, "doublings", 0))
        key = pack_key(ladder[0])
        if key is None:
            items.append(ladder)
            continue
        runs = of_kind(ClassifyConfig, ladder)  # only the ConvNet packs (pack_key)
        batch = runs[0].batch_size
        # small batches: any norms together, for the pack's size is what pays there (measured at batch 2, K=20: four
        # one-norm packs of 5 took 1.3-1.4x the time of one mixed pack, 2026-12-07); large ones: one norm a pack
        # (batch 32, 4-5 norms x 5 seeds: mixed packs of 10 1.07x-1.12x one-norm packs of 5, of 20-25 0.86x-1.15x;
        # batch 64: 0.96x and 0.79x; 2026-12-07, with a mixed layer in one kernel call: not worth the larger packs)
        apart = runs[0].norm if batch >= MATMUL_MIN_BATCH else ""
        groups.setdefault(key + json.dumps([c.doublings for c in runs]) + apart, []).append(runs)
    for group in groups.values():
        group.sort(key=lambda ladder: _run_order(ladder[0]))
        count = -(-len(group) // min(max_copies, pack_size(group[0][0].batch_size)))
        size = -(-len(group) // count)
        items += [[c for ladder in group[i : i + size] for c in ladder] for i in range(0, len(group), size)]
    return items


def _pack_axis(single: torch.Size, packed: torch.Size, copies: int) -> int | None:
    """The axis along which ``copies`` tensors of shape ``single`` concatenate to ``packed``; None if shared."""
    if copies == 1:  # a part of a mixed pack that holds one run: the tensor is that run's
        return 0 if len(single) else None
    if single == packed:
        return None
    axes = [a for a, (s, p) in enumerate(zip(single, packed, strict=True)) if s != p]
    if len(single) != len(packed) or len(axes) != 1 or packed[axes[0]] != copies * single[axes[0]]:
        raise ValueError(f"cannot pack tensors of shape {tuple(single)} into {tuple(packed)}")
    return axes[0]


def _layout(packed: nn.Module, copies: int) -> dict[str, tuple[str, list[int]]]:
    """Packed state key -> (the single-run key it holds, the runs it holds in order). A mixed pack's norm layers
    (:class:`~normlab.lab.training.models.SplitNorm`) hold each group of runs in a part of their own."""
    layout = {key: (key, list(range(copies))) for key in packed.state_dict()}
    for prefix, module in packed.named_modules():
        if isinstance(module, SplitNorm):
            for g, runs in enumerate(module.run_groups):
                head = f"{prefix}.parts.{g}."
                for key in layout:
                    if key.startswith(head):
                        layout[key] = (f"{prefix}.{key[len(head) :]}", runs)
    return layout


PackLayout = dict[str, tuple[int | None, list[int]]]  # packed key -> (pack axis or None if shared, runs held)


def pack_state(models: Sequence[nn.Module], packed: nn.Module) -> PackLayout:
    """Copy ``models``' state into ``packed`` (each tensor the models' tensors concatenated); returns each entry's
    pack axis and runs. A tensor the models share (a step counter) must be equal in all of them; a shared
    parameter cannot be packed (ValueError)."""
    states = [m.state_dict() for m in models]
    packed_state = packed.state_dict()
    params = dict(packed.named_parameters())
    layout: PackLayout = {}
    with torch.no_grad():
        for key, (single_key, runs) in _layout(packed, len(models)).items():
            target = packed_state[key]
            parts = [states[i][single_key] for i in runs]
            axis = _pack_axis(parts[0].shape, target.shape, len(runs))
            if axis is None:
                if key in params:
                    raise ValueError(f"parameter {key} is shared by the packed runs")
                if any(not torch.equal(parts[0], p) for p in parts[1:]):
                    raise ValueError(f"buffer {key} differs between the runs and cannot be shared")
                target.copy_(parts[0])
            else:
                target.copy_(torch.cat(parts, dim=axis))
            layout[key] = (axis, runs)
    return layout


def unpack_state(packed: nn.Module, models: Sequence[nn.Module]) -> None:
    """The inverse of :func:`pack_state`: load each model's slice of ``packed``'s state into it."""
    shapes = {key: t.shape for key, t in models[0].state_dict().items()}  # the runs' nets have the same shapes
    for model, state in zip(models, split_packed(packed.state_dict(), packed, shapes, len(models)), strict=True):
        model.load_state_dict(state)


def split_packed(
    state: dict[str, Tensor], packed: nn.Module, shapes: dict[str, torch.Size], copies: int
) -> list[dict[str, Tensor]]:
    """Each run's slice of ``state`` (tensors under ``packed``'s keys, or some of them: its momentum buffers), by
    the single-run keys (whose shapes are ``shapes``)."""
    parts: list[dict[str, Tensor]] = [{} for _ in range(copies)]
    for key, (single_key, runs) in _layout(packed, copies).items():
        if key in state:
            axis = _pack_axis(shapes[single_key], state[key].shape, len(runs))
            for j, i in enumerate(runs):
                parts[i][single_key] = state[key] if axis is None else state[key].chunk(len(runs), axis)[j]
    return parts


def join_packed(parts: list[dict[str, Tensor]], packed: nn.Module, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`split_packed`: the runs' slices joined under ``packed``'s keys that ``like`` has."""
    out = {}
    for key, (single_key, runs) in _layout(packed, len(parts)).items():
        if key in like:
            pieces = [parts[i][single_key] for i in runs]
            axis = _pack_axis(pieces[0].shape, like[key].shape, len(runs))
            out[key] = pieces[0] if axis is None else torch.cat(pieces, dim=axis)
    return out


def _per_run(values: list[float], p: Tensor, axis: int | None, runs: list[int]) -> Tensor:
    """One value per run, broadcast over ``p``'s slices of the ``runs`` it holds along its pack ``axis``."""
    shape = [1] * p.dim()
    shape[cast(int, axis)] = -1  # a parameter's axis: never None (pack_state refuses a shared parameter)
    per_run = torch.tensor([values[i] for i in runs], dtype=p.dtype, device=p.device)
    return per_run.repeat_interleave(p.shape[cast(int, axis)] // len(runs)).view(shape)


def _flatten(params: list[Tensor]) -> Tensor:
    """One flat tensor holding ``params``' values, each parameter's data becoming a view of its slice, so that an
    elementwise update of the flat tensor updates them all (in-place writes to a parameter, a state dict loaded,
    reach the flat tensor too)."""
    flat = torch.cat([p.detach().reshape(-1) for p in params]) if params else torch.zeros(0)
    start = 0
    for p in params:
        p.data = flat[start : start + p.numel()].view_as(p)
        start += p.numel()
    return flat


class PackedSGD:
    """``torch.optim.SGD`` (momentum, weight decay, no dampening or Nesterov) with a learning rate and weight decay
    per packed run, broadcast along each tensor's pack axis. Learning rates follow one schedule: run k's rate at a
    step is ``lrs[k] * factor``. The parameters are views of one flat tensor (:func:`_flatten`) and the rates and
    decays are flat tensors of one value per element, so a step is a handful of kernels over the flat tensor
    (the gradients gathered by one ``cat``), whatever the number of tensors; per-tensor (foreach) ops of
    differently shaped operands cost a kernel per tensor, most of a small pack's optimizer time. Each element's
    update is SGD's up to float rounding (the fused multiply-adds may round once where SGD rounds twice)."""

    def __init__(
        self, packed: nn.Module, layout: PackLayout, lrs: list[float], decays: list[float], momentum: float
    ) -> None:
        self.params: list[Tensor] = [p for _, p in packed.named_parameters()]
        self.layout = [layout[name] for name, _ in packed.named_parameters()]
        self.flat = _flatten(self.params)
        self.momentum = momentum
        self.decays = self._per_element(decays) if any(decays) else None
        self.base_lrs = list(lrs)
        self.lrs = self._per_element(self.base_lrs)
        self.buffer: Tensor | None = None  # the momentum, flat

    def _per_element(self, values: list[float]) -> Tensor:
        """Each parameter element's run's value, in the flat tensor's order."""
        parts = [
            _per_run(values, p, *lo).expand_as(p).reshape(-1) for p, lo in zip(self.params, self.layout, strict=True)
        ]
        return torch.cat(parts) if parts else self.flat.new_zeros(0)

    def _views(self, flat: Tensor) -> list[Tensor]:
        """``flat`` (the flat tensor's layout) as one tensor per parameter."""
        return [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in self.params]), self.params, strict=True)]

    def stop(self, run: int) -> None:
        """Run ``run`` learns no more (it diverged)."""
        self.base_lrs[run] = 0.0
        self.lrs = self._per_element(self.base_lrs)

    @torch.no_grad()
    def step(self, factor: float) -> None:
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        if self.decays is not None:
            grad = grad + self.flat * self.decays
        if self.momentum:
            self.buffer = grad if self.buffer is None else grad.add_(self.buffer, alpha=self.momentum)
            grad = self.buffer
        self.flat.addcmul_(self.lrs, grad, value=-factor)  # one pass: p - factor * lr * buf

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffers one per parameter (copies: the state outlives later steps) and the runs' rates."""
        buffers = None if self.buffer is None else [b.clone() for b in self._views(self.buffer)]
        return {"buffers": buffers, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffers = state["buffers"]
        self.buffer = None if buffers is None else torch.cat([b.reshape(-1) for b in buffers]).to(self.flat)
        for run, lr in enumerate(state["base_lrs"]):
            if lr == 0.0 and self.base_lrs[run] != 0.0:
                self.stop(run)


def _per_run_norms(tensors: list[Tensor], layout: list[tuple[int, list[int]]], copies: int) -> Tensor:
    """The Euclidean norm of each run's slices of ``tensors`` taken together: shape ``(copies,)``."""
    squares = torch.zeros(copies, dtype=torch.float64)
    for t, (axis, runs) in zip(tensors, layout, strict=True):
        for run, part in zip(runs, t.chunk(len(runs), dim=axis), strict=True):
            squares[run] += float(part.double().square().sum())
    return squares.sqrt()


class PackedTraining:
    """K runs of the ConvNet packed into one model: each run's loss its own, summed, one :class:`PackedSGD` step."""

    def __init__(self, cs: list[ClassifyConfig], data: ImageData, packed: ConvNet, layout: PackLayout) -> None:
        self.cs, self.data, self.packed, self.layout, self.runs = cs, data, packed, layout, len(cs)
        self.device = torch.device(cs[0].device)
        self.opt = PackedSGD(packed, layout, [c.lr for c in cs], [c.weight_decay for c in cs], cs[0].momentum)
        self.schedule = classifier_schedule(cs[0], data, 1.0)
        self.orders = [BatchOrder(c, data.y_train) for c in cs]
        self.curves = [new_classifier_curves() for _ in cs]
        self._plans: dict[tuple[tuple[int, ...], bool], list[FusedLayer] | None] = {}

    def _losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Each run's mean loss ``(K,)``: the logits ``(N, K, classes)`` as N*K rows, whose 1-d cross entropy is
        several times cheaper than the (N, classes, K) form's at a small batch."""
        logits = self.packed(x)
        rows = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return rows.view(y.shape).mean(0)

    def step(self, step: int, live: list[int], probe: bool) -> list[float]:
        k, in_shape = self.runs, self.data.x_train.shape[1:]
        idx = torch.stack([o.next() for o in self.orders], dim=1)  # (B, K)
        x = self.data.x_train[idx].reshape(idx.shape[0], k * in_shape[0], *in_shape[1:]).to(self.device)
        y = self.data.y_train[idx].to(self.device)
        factor = self.schedule.factor(step)
        probing = self.cs[0].grad_predictiveness and probe
        plan = None if probing else self._fused_plan(x)
        if plan is not None:
            mask = torch.zeros(k)
            mask[live] = 1.0
            losses, grads = fused_loss_and_grads(self.packed, plan, x, y, mask)
            for p in self.opt.params:
                p.grad = grads[p]
            self.opt.step(factor)
            return losses.tolist()
        losses = self._losses(x, y)
        self.opt.zero_grad()
        losses[live].sum().backward()
        if probing:
            named = [(n, p) for n, p in self.packed.named_parameters() if p.requires_grad]
            rates = [c.lr * factor for c in self.cs]
            sizes = [_per_run(rates, p, *self.layout[n]) for n, p in named]
            # a parameter's axis is never None (pack_state refuses a shared parameter)
            layouts = cast("list[tuple[int, list[int]]]", [self.layout[n] for n, _ in named])
            values = gradient_predictiveness(
                self.packed,
                lambda: self._losses(x, y).sum(),
                [p for _, p in named],
                sizes,
                lambda ts: _per_run_norms(ts, layouts, k),
            )
            for i in live:
                self.curves[i]["grad_pred"].append(values[i])
        self.opt.step(factor)
        return losses.detach().tolist()

    def _fused_plan(self, x: Tensor) -> list[FusedLayer] | None:
        """:func:`~normlab.lab.training.fused_step.fused_plan` of the pack for inputs like ``x``, found once a
        shape and mode: nothing outside this training changes its net's modules or replaces their parameters (the
        plan holds them; the optimizer updates them in place)."""
        key = (tuple(x.shape), self.packed.training)
        if key not in self._plans:
            self._plans[key] = fused_plan(self.packed, x)
        return self._plans[key]

    def stop(self, run: int) -> None:
        self.opt.stop(run)

    def record(self, step: int, run: int, loss: float) -> None:
        w2 = watched_layer(self.packed).weight.detach().reshape(self.runs, -1).square().sum(1).tolist()[run]
        record_point(self.curves[run], step, loss, w2, self.cs[run].lr * self.schedule.factor(step))

    def state_dict(self) -> dict[str, Any]:
        return {
            "packed": self.packed.state_dict(),
            "opt": self.opt.state_dict(),
            "curves": self.curves,
            "orders": [o.state() for o in self.orders],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.packed.load_state_dict(state["packed"])
        self.packed.train()
        self.opt.load_state_dict(state["opt"])
        self.curves = state["curves"]
        for order, saved in zip(self.orders, state["orders"], strict=True):
            order.load(saved)


class PackTrunk:
    """A pack's trunk (its runs' stable phase), kept per run (a :class:`~normlab.lab.sweep.checkpoint.Trunk` each, the
    runs' slices of the model, momentum, data order, curves and loss log), so that a later pack holding any of these
    runs at a larger budget (the settings a verdict needs further, packed anew) goes on from there. A pack whose runs
    were not all kept at one step starts over. Results equal a pack trained from step 0 up to float rounding, as a
    pack equals its runs alone."""

    def __init__(self, trunks: list[Trunk], training: PackedTraining, shapes: dict[str, torch.Size]) -> None:
        self.trunks, self.training, self.shapes = trunks, training, shapes

    def save(self, state: dict[str, Any]) -> None:
        t, packed, runs = state["training"], self.training.packed, self.training.runs
        models = split_packed(t["packed"], packed, self.shapes, runs)
        names = [name for name, _ in packed.named_parameters()]
        buffers = (
            [None] * runs
            if t["opt"]["buffers"] is None
            else split_packed(dict(zip(names, t["opt"]["buffers"], strict=True)), packed, self.shapes, runs)
        )
        for k, trunk in enumerate(self.trunks):
            trunk.save(
                {
                    "step": state["step"],
                    "alive": state["alive"][k],
                    "diverged": state["diverged"][k],
                    "log": state["logs"][k],
                    "rng": state["rng"],
                    "model": models[k],
                    "buffers": buffers[k],
                    "base_lr": t["opt"]["base_lrs"][k],
                    "curves": t["curves"][k],
                    "order": t["orders"][k],
                }
            )

    def load(self, before: int) -> dict[str, Any] | None:
        parts: list[Any] = [trunk.load(before) for trunk in self.trunks]  # states, or None: checked below
        if any(p is None or "model" not in p for p in parts) or len({p["step"] for p in parts}) != 1:
            return None
        packed = self.training.packed
        params = dict(packed.named_parameters())
        buffers = None
        if all(p["buffers"] is not None for p in parts):
            joined = join_packed([p["buffers"] for p in parts], packed, params)
            buffers = [joined[name] for name in params]
        return {
            "step": parts[0]["step"],
            "alive": [p["alive"] for p in parts],
            "rng": parts[0]["rng"],
            "diverged": [p["diverged"] for p in parts],
            "logs": [p["log"] for p in parts],
            "done": [],
            "training": {
                "packed": join_packed([p["model"] for p in parts], packed, packed.state_dict()),
                "opt": {"buffers": buffers, "base_lrs": [p["base_lr"] for p in parts]},
                "curves": [p["curves"] for p in parts],
                "orders": [p["order"] for p in parts],
            },
        }


def train_packed(
    configs: list[RunConfig],
    saver: Saver | None = None,
    trunk_for: Callable[[list[ClassifyConfig]], Trunk] | None = None,
) -> list[RunOutput]:
    """Train the runs ``configs`` (one :func:`pack_key`) together; one (metrics, curves) per config, each what the
    run gives alone up to float rounding. A run may come at several budgets (the same configuration but for
    ``doublings``, a "wsd" schedule; every run of the pack at the same ones): its shorter budgets branch off the
    pack's trajectory (:func:`normlab.lab.training.loop.fit_ladder`). ``saver`` checkpoints the pack and resumes it;
    ``trunk_for(configs of one run)`` (a :class:`~normlab.lab.sweep.checkpoint.Trunk`) keeps each run's stable phase
    for a larger budget asked for later (:class:`PackTrunk`), and starts from the ones kept earlier."""
    rungs_of = [sorted(ladder, key=lambda c: c.doublings) for ladder in ladders(of_kind(ClassifyConfig, configs))]
    if len({pack_key(c) for c in configs}) != 1 or pack_key(configs[0]) is None:
        raise ValueError("train_packed: the runs must share one pack key")
    if len({tuple(c.doublings for c in rungs) for rungs in rungs_of}) != 1:
        raise ValueError("train_packed: every run of a pack must come at the same budgets")
    cs = [rungs[-1] for rungs in rungs_of]
    device = torch.device(cs[0].device)
    data = classifier_data(cs[0])
    singles = []
    for c in cs:
        torch.manual_seed(c.seed)
        singles.append(build_classifier(c, data).to(device))
    before: list[dict[str, float]] = [{} for _ in cs]
    for m, c, model in zip(before, cs, singles, strict=True):
        if c.scale_invariance:
            m[SCALE_INVARIANCE_ERROR] = scale_invariance_error(
                model, watched_layer(model), data.x_train[:64].to(device)
            )
    packed = build_packed_classifier(cs, data).to(device)
    training = PackedTraining(cs, data, packed, pack_state(singles, packed))
    rung_configs = [[rungs[j] for rungs in rungs_of] for j in range(len(rungs_of[0]))]
    schedules = [classifier_schedule(rung[0], data, 1.0) for rung in rung_configs]

    def evaluate(index: int, diverged: list[bool]) -> list[RunOutput]:
        unpack_state(packed, singles)
        return [
            evaluate_classifier(model, c, data, {**m, DIVERGED: float(gone)}, curve)
            for m, c, model, curve, gone in zip(
                before, rung_configs[index], singles, training.curves, diverged, strict=True
            )
        ]

    every = curve_every(base_steps(cs[0], data), cs[0].points)
    trunk = None
    if trunk_for is not None and cs[0].lr_schedule == "wsd":
        shapes = {key: t.shape for key, t in singles[0].state_dict().items()}
        trunk = PackTrunk([trunk_for(rungs) for rungs in rungs_of], training, shapes)
    by_rung = fit_ladder(training, schedules, evaluate, every=every, saver=saver, trunk=trunk)
    outputs = {config_key(rungs[j]): by_rung[j][k] for k, rungs in enumerate(rungs_of) for j in range(len(rungs))}
    return [outputs[config_key(c)] for c in configs]
