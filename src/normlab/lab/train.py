"""Training loops for one lab run: a configuration dict in, (metrics, curves) out. Deterministic for a seed on CPU."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ClassifyConfig, RunOutput, from_dict
from .metrics import TEST_ACC, TEST_BPC, VALID_ACC, VALID_BPC
from .data import ImageData, load_images, load_text
from ..nn import data_dependent_init
from ..registry import WEIGHT_NORM_RECIPE
from .models import CharTransformer, ConvNet, uses_weight_norm

__all__ = ["run", "RunOutput"]



def run(config: dict[str, Any], saver=None) -> RunOutput:
    """Execute one run described by ``config`` (its ``task`` picks the loop); ``saver`` checkpoints it."""
    from_dict(config)  # a malformed configuration fails here, before any work
    torch.manual_seed(config["seed"])
    task = config["task"]
    if task == "classify":
        return train_classifier(config)
    if task == "char_lm":
        return train_char_lm(config)
    if task == "distributed":
        from .distributed_run import run_distributed

        return run_distributed(config)
    raise ValueError(f"unknown task {task!r}")


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run probes (extra forwards, trial steps) without leaving a trace in parameters or running statistics."""
    saved = copy.deepcopy(model.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(saved)


class BatchStatRecorder:
    """Records the per-step batch mean and variance of a layer's input, per feature (PowerNorm's measurement)."""

    def __init__(self, module: nn.Module, channel_dim: int) -> None:
        self.means: list[Tensor] = []
        self.vars: list[Tensor] = []
        self.channel_dim = channel_dim
        self.enabled = True
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if not (self.enabled and module.training):
            return
        x = args[0].detach().movedim(self.channel_dim, -1).reshape(-1, args[0].shape[self.channel_dim])
        var, mean = torch.var_mean(x.double(), dim=0)
        self.means.append(mean)
        self.vars.append(var)

    def fluctuation(self, skip: int) -> dict[str, float]:
        """Across steps: std of the batch mean over the typical std, and relative std of the batch variance."""
        self.handle.remove()
        if len(self.means) <= skip + 1:
            return {}
        means, variances = torch.stack(self.means[skip:]), torch.stack(self.vars[skip:])
        scale = variances.mean(0).sqrt().clamp_min(1e-12)
        return {
            "batch_mean_fluctuation": float((means.std(0) / scale).mean()),
            "batch_var_fluctuation": float((variances.std(0) / variances.mean(0).clamp_min(1e-12)).mean()),
        }


def _stream_order(labels: Tensor, stream: str, chunk: int, generator: torch.Generator) -> Tensor:
    """The order examples arrive in: i.i.d. permutation, or class-sorted chunks cycling through the classes."""
    n = len(labels)
    if stream == "iid":
        return torch.randperm(n, generator=generator)
    per_class = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    chunks = [list(idx.split(chunk)) for idx in per_class]
    order = []
    while any(chunks):
        for class_chunks in chunks:
            if class_chunks:
                order.append(class_chunks.pop(0))
    return torch.cat(order)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return correct / len(x)


def _batch_stats_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
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


def _contrast_curve(model: nn.Module, data: ImageData, strengths: list[float], seed: int, device) -> list[float]:
    """Accuracy when every test example gets its own contrast a and brightness b: x -> a*x + b.

    Strength s: log a ~ U(-s ln 5, s ln 5) and b ~ U(-2s, 2s) in standardized units.
    """
    g = torch.Generator().manual_seed(seed + 1000)
    n = len(data.x_test)
    shape = (n,) + (1,) * (data.x_test.dim() - 1)
    u, v = torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1
    x, y = data.x_test.to(device), data.y_test.to(device)
    u, v = u.to(device), v.to(device)
    return [_accuracy(model, torch.exp(u * s * math.log(5)) * x + 2 * s * v, y) for s in strengths]


def _output_spread(model: nn.Module, data: ImageData, batch: int, device, compositions: int = 12) -> float:
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


def _scale_invariance_error(model: nn.Module, layer: nn.Module, x: Tensor, alpha: float = 3.0) -> float:
    """max |f(x; alpha*w) - f(x; w)| / max |f(x; w)| for the layer's weight, in training mode."""
    with preserved_state(model), torch.no_grad():
        base = model(x)
        layer.weight.mul_(alpha)
        scaled = model(x)
    return float((scaled - base).abs().max() / base.abs().max().clamp_min(1e-12))


def _gradient_predictiveness(model, loss_fn, x, y, lr) -> float:
    """Santurkar et al. 2018: ||grad L(w) - grad L(w - lr*grad L(w))|| / ||grad L(w)|| on one batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    with preserved_state(model):
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
        moved = torch.autograd.grad(loss_fn(model(x), y), params)
    diff = math.sqrt(sum(float((a - b).square().sum()) for a, b in zip(grads, moved)))
    norm = math.sqrt(sum(float(a.square().sum()) for a in grads))
    return diff / max(norm, 1e-12)


class _LossLog:
    """The loss between two curve points, and divergence: non-finite, or 10x the first loss."""

    def __init__(self) -> None:
        self.initial: float | None = None
        self.window: list[float] = []

    def add(self, value: float) -> bool:
        """Record one step's loss; True when training has diverged."""
        self.initial = value if self.initial is None else self.initial
        self.window.append(value)
        return not math.isfinite(value) or value > 10 * max(self.initial, 1.0)

    def flush(self) -> float:
        mean, self.window = float(np.mean(self.window)), []
        return mean


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate's multiplier at ``step``: 1 (constant) or a cosine decay to 0 at the last step."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")


def classifier_data(c: ClassifyConfig) -> ImageData:
    """The run's data: the first ``train_subset`` training examples; with ``validation_fraction``, the last share
    of those is held out and takes the test split's place (the test set is then not read)."""
    data = load_images(c.data, c.data_path)
    x, y = data.x_train[: c.train_subset or None], data.y_train[: c.train_subset or None]
    if c.validation_fraction:
        keep = len(x) - max(1, round(c.validation_fraction * len(x)))
        return ImageData(data.name, x[:keep], y[:keep], x[keep:], y[keep:], data.num_classes)
    return ImageData(data.name, x, y, data.x_test, data.y_test, data.num_classes)


INIT_BATCH = 256  # examples of Weight Normalization's data-dependent initialization


def build_classifier(c: ClassifyConfig, data: ImageData) -> ConvNet:
    """The run's ConvNet; weight-normalized layers start from WN's data-dependent initialization (its recipe) on
    a batch drawn from the run's own generator, so the run starts the same alone and packed."""
    weight_norm = uses_weight_norm(c.norm, c.weight_norm)
    model = ConvNet(data.in_channels, data.num_classes, data.spatial_dims, c.norm, c.width, c.depth, weight_norm,
                    norm_options=c.norm_options)  # fmt: skip
    if weight_norm and WEIGHT_NORM_RECIPE.data_init:
        g = torch.Generator().manual_seed(c.seed + 7919)
        idx = torch.randperm(len(data.x_train), generator=g)[:INIT_BATCH]
        data_dependent_init(model.train(), data.x_train[idx])
    return model


def build_packed_classifier(cs: list[ClassifyConfig], data: ImageData) -> ConvNet:
    """The lab's ConvNet for the runs ``cs`` (one pack key) side by side; runs of several norms share it."""
    c0 = cs[0]
    return ConvNet(data.in_channels, data.num_classes, data.spatial_dims, [c.norm for c in cs], c0.width, c0.depth,
                   uses_weight_norm(c0.norm, c0.weight_norm), copies=len(cs),
                   norm_options=[c.norm_options for c in cs])  # fmt: skip


def classifier_steps(c: ClassifyConfig, data: ImageData) -> int:
    return max(1, round(c.budget * (c.steps or c.epochs * math.ceil(len(data.x_train) / c.batch_size))))


class BatchOrder:
    """The examples one run trains on, batch after batch, from its own generator (seeded by the run's seed)."""

    def __init__(self, c: ClassifyConfig, labels: Tensor) -> None:
        self.c, self.labels = c, labels
        self.generator = torch.Generator().manual_seed(c.seed)
        self.order: Tensor | None = None
        self.pos = 0

    def next(self) -> Tensor:
        batch = self.c.batch_size
        if self.order is None or self.pos + batch > len(self.order):
            self.order, self.pos = _stream_order(self.labels, self.c.stream, self.c.chunk, self.generator), 0
        self.pos += batch
        return self.order[self.pos - batch : self.pos]


def watched_layer(model: ConvNet) -> nn.Module:
    """The second conv, followed by a norm: the weight-decay study's layer."""
    return model.features[3]


def train_classifier(config: dict[str, Any]) -> RunOutput:
    c = from_dict(config)
    data = classifier_data(c)
    device = torch.device(c.device)
    model = build_classifier(c, data).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    steps = classifier_steps(c, data)
    watched = watched_layer(model)
    metrics: dict[str, float] = {}
    if c.scale_invariance:
        metrics["scale_invariance_error"] = _scale_invariance_error(model, watched, data.x_train[:64].to(device))
    last_norm = model.features[len(model.features) - 2]
    recorder = BatchStatRecorder(last_norm, channel_dim=1) if c.record_batch_stats else None
    curves = new_classifier_curves()
    every = max(1, steps // c.points)
    batches, log = BatchOrder(c, data.y_train), _LossLog()
    for step in range(steps):
        idx = batches.next()
        x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
        lr = c.lr * lr_factor(c.lr_schedule, step, steps)
        for group in opt.param_groups:
            group["lr"] = lr
        if c.grad_predictiveness and step % every == 0:
            curves["grad_pred"].append(_gradient_predictiveness(model, F.cross_entropy, x, y, lr))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log.add(float(loss.detach())):
            metrics["diverged"] = 1.0
            break
        if step % every == 0 or step == steps - 1:
            w2 = float(watched.weight.detach().square().sum())
            record_point(curves, step, log.flush(), w2, lr)
    metrics.setdefault("diverged", 0.0)
    if recorder is not None:
        metrics.update(recorder.fluctuation(skip=min(20, steps // 4)))
    return evaluate_classifier(model, c, data, metrics, curves)


def new_classifier_curves() -> dict[str, list[float]]:
    return {"step": [], "loss": [], "weight_norm": [], "effective_lr": [], "grad_pred": []}


def record_point(curves: dict[str, list[float]], step: int, loss: float, watched_w2: float, lr: float) -> None:
    curves["step"].append(step)
    curves["loss"].append(loss)
    curves["weight_norm"].append(math.sqrt(watched_w2))
    curves["effective_lr"].append(lr / watched_w2)


def evaluate_classifier(
    model: ConvNet, c: ClassifyConfig, data: ImageData, metrics: dict[str, float], curves: dict[str, list[float]]
) -> RunOutput:
    """The test metrics of a trained (or diverged) classifier; shared by runs trained alone and packed."""
    device = torch.device(c.device)
    model.eval()
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    if c.validation_fraction:  # a selection run: its score on the held-out examples, nothing of the test set
        chance = 1.0 / data.num_classes
        metrics[VALID_ACC] = chance if metrics.get("diverged") else _accuracy(model, x_test, y_test)
        return metrics, curves
    if metrics.get("diverged"):
        chance = 1.0 / data.num_classes
        metrics.update({TEST_ACC: chance, "test_acc_batch_stats": chance})
        return metrics, curves
    metrics[TEST_ACC] = _accuracy(model, x_test, y_test)
    metrics["train_acc"] = _accuracy(model, data.x_train.to(device), data.y_train.to(device))
    metrics["train_loss"] = curves["loss"][-1] if curves["loss"] else float("nan")
    metrics["test_acc_batch_stats"] = _batch_stats_accuracy(model, x_test, y_test, c.test_batch)
    if c.contrast_strengths:
        curves["contrast_acc"] = _contrast_curve(model, data, list(c.contrast_strengths), c.seed, device)
    if c.output_spread:
        metrics["output_spread"] = _output_spread(model, data, c.spread_batch, device)
    metrics["final_weight_norm"] = curves["weight_norm"][-1]
    return metrics, curves


def _lm_batch(ids: Tensor, batch: int, seq_len: int, pad: int, g: torch.Generator, variable: bool):
    starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=g)
    window = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])
    tokens, targets = window[:, :-1].clone(), window[:, 1:].clone()
    if variable:
        lengths = torch.randint(seq_len // 4, seq_len + 1, (batch,), generator=g)
    else:
        lengths = torch.full((batch,), seq_len)
    padding = torch.arange(seq_len)[None, :] >= lengths[:, None]
    tokens[padding] = pad
    targets[padding] = -100
    return tokens, targets, padding


def train_char_lm(config: dict[str, Any]) -> RunOutput:
    c = from_dict(config)
    device = torch.device(c.device)
    text = load_text()
    vocab, pad = len(text.vocab), len(text.vocab)
    model = CharTransformer(vocab, c.norm, c.dim, c.layers, max_len=c.seq_len).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(c.seed)
    recorder = BatchStatRecorder(model.blocks[-1].norm2, channel_dim=-1)
    curves: dict[str, list[float]] = {"step": [], "loss": [], VALID_BPC: []}
    steps, warmup = max(1, round(c.budget * c.steps)), round(c.budget * c.warmup)
    every = max(1, steps // c.points)
    vg = torch.Generator().manual_seed(1234)
    held_out = {split: [tuple(t.to(device) for t in _lm_batch(ids, 32, c.seq_len, pad, vg, variable=False))
                        for _ in range(4)] for split, ids in (("valid", text.valid), ("test", text.test))}  # fmt: skip

    def bpc(split: str = "valid") -> float:
        model.eval()
        recorder.enabled = False
        with torch.no_grad():
            losses = [float(F.cross_entropy(model(t, p).transpose(1, 2), y)) for t, y, p in held_out[split]]
        model.train()
        recorder.enabled = True
        return float(np.mean(losses)) / math.log(2)

    metrics: dict[str, float] = {"diverged": 0.0}
    log = _LossLog()
    for step in range(steps):
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        for group in opt.param_groups:
            group["lr"] = c.lr * warm * lr_factor(c.lr_schedule, step, steps)
        tokens, targets, padding = (t.to(device) for t in _lm_batch(text.train, c.batch_size, c.seq_len, pad, g, True))
        loss = F.cross_entropy(model(tokens, padding).transpose(1, 2), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log.add(float(loss.detach())):
            metrics["diverged"] = 1.0
            break
        if step % every == 0 or step == steps - 1:
            curves["step"].append(step)
            curves["loss"].append(log.flush() / math.log(2))
            curves[VALID_BPC].append(bpc("valid"))
    metrics.update(recorder.fluctuation(skip=min(20, steps // 4)))
    for name, split in ((VALID_BPC, "valid"), (TEST_BPC, "test")):
        metrics[name] = bpc(split) if not metrics["diverged"] else math.log2(vocab)
    return metrics, curves
