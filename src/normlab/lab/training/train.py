"""The lab's runs, a typed configuration in, (metrics, curves) out: the ConvNet alone and the language model, each a
:class:`~normlab.lab.training.loop.Training` stepped by the one loop (:func:`normlab.lab.training.loop.fit`).
Deterministic for a seed on CPU, resumed bit for bit from a checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import data_dependent_init
from ...registry import WEIGHT_NORM_RECIPE, canonical_name, is_batch_dependent
from ..config import CharLMConfig, ClassifyConfig, DistributedConfig, RunConfig, RunOutput, UserConfig, as_dict, of_kind
from ..metrics import (
    DIVERGED,
    FINAL_WEIGHT_NORM,
    OUTPUT_SPREAD,
    SCALE_INVARIANCE_ERROR,
    TEST_ACC,
    TEST_ACC_BATCH_STATS,
    TEST_BPC,
    TRAIN_ACC,
    TRAIN_LOSS,
    VALID_ACC,
    VALID_BPC,
)
from ..store import config_key
from .data import ImageData, load_images, load_text, training_part
from .loop import Saver, Schedule, Trunk, fit_ladder
from .measurements import train_once, without_measurements
from .models import ConvNet, uses_weight_norm
from .probes import (
    BatchStatRecorder,
    accuracy,
    batch_stats_accuracy,
    contrast_curve,
    gradient_predictiveness,
    output_spread,
    scale_invariance_error,
    whole_norm,
)
from .transformer import CharTransformer

__all__ = ["run", "run_ladder", "ladder_key", "ladders", "can_branch", "RunOutput"]

R = TypeVar("R", bound=RunConfig)  # a kind of run configuration, kept by what groups them


def run(config: RunConfig, saver: Saver | None = None) -> RunOutput:
    """Execute one run described by ``config`` (its ``task`` picks the training); ``saver``
    (:class:`~normlab.lab.sweep.checkpoint.Saver`) checkpoints it and resumes it from its last checkpoint."""
    return run_ladder([config], saver)[0]


def ladder_key(config: RunConfig) -> str:
    """Runs with the same key are one run at several budgets (they differ in ``doublings`` alone, and in
    measurements that change no training step: :mod:`~normlab.lab.training.measurements`)."""
    training = as_dict(without_measurements(config))
    return json.dumps({k: v for k, v in training.items() if k != "doublings"}, sort_keys=True)


def can_branch(config: RunConfig) -> bool:
    """Whether the run's shorter budgets branch off its longer ones (a "wsd" schedule of a laddered task)."""
    return isinstance(config, ClassifyConfig | CharLMConfig) and config.lr_schedule == "wsd"


def ladders(configs: Iterable[R]) -> list[list[R]]:
    """``configs`` grouped into runs, in the order first seen: a run's budgets together (one :func:`ladder_key`, a
    "wsd" schedule that branches: :func:`can_branch`), any other configuration alone."""
    runs: dict[str, list[R]] = {}
    for config in configs:
        runs.setdefault(ladder_key(config) if can_branch(config) else config_key(config), []).append(config)
    return list(runs.values())


def run_ladder(configs: list[RunConfig], saver: Saver | None = None, trunk: Trunk | None = None) -> list[RunOutput]:
    """One run at several budgets (``configs``: one :func:`ladder_key`, in any order; a "wsd" schedule
    when there are several), trained as one trajectory (:func:`normlab.lab.training.loop.fit_ladder`); one (metrics,
    curves) per config, each what that config gives alone. ``trunk`` (:class:`~normlab.lab.sweep.checkpoint.Trunk`)
    keeps the run's stable phase for a larger budget asked for later, and starts from one kept earlier."""
    if len({ladder_key(c) for c in configs}) != 1 or (len(configs) > 1 and not can_branch(configs[0])):
        raise ValueError("run_ladder: the configurations must be one 'wsd' run at several budgets")
    return train_once(configs, lambda runs: _train(runs, saver, trunk))


def _train(configs: list[RunConfig], saver: Saver | None, trunk: Trunk | None) -> list[RunOutput]:
    torch.manual_seed(configs[0].seed)
    task = configs[0].task
    if task == "classify":
        return train_classifier(configs, saver, trunk)
    if task == "char_lm":
        return train_char_lm(configs, saver, trunk)
    if task == "distributed":
        from .distributed_run import run_distributed

        return [run_distributed(of_kind(DistributedConfig, configs)[0])]
    if task == "user":
        from .user_model import train_user

        return [train_user(of_kind(UserConfig, configs)[0], saver)]
    raise ValueError(f"unknown task {task!r}")


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


def classifier_data(c: ClassifyConfig) -> ImageData:
    """The run's data: the first ``train_subset`` training examples; with ``validation_fraction``, the last share
    of those is held out and takes the test split's place (the test set is then not read)."""
    data = load_images(c.data, c.data_path)
    x, y = data.x_train[: c.train_subset or None], data.y_train[: c.train_subset or None]
    if c.validation_fraction:
        keep = training_part(len(x), c.validation_fraction)
        return ImageData(data.name, x[:keep], y[:keep], x[keep:], y[keep:], data.num_classes)
    return ImageData(data.name, x, y, data.x_test, data.y_test, data.num_classes)


INIT_BATCH = 256  # examples of Weight Normalization's data-dependent initialization


def build_classifier(c: ClassifyConfig, data: ImageData) -> ConvNet:
    """The run's ConvNet; weight-normalized layers start from WN's data-dependent initialization (its recipe) on
    a batch drawn from the run's own generator, so the run starts the same alone and packed."""
    weight_norm = uses_weight_norm(c.norm, c.weight_norm)
    model = ConvNet(
        data.in_channels,
        data.num_classes,
        data.spatial_dims,
        c.norm,
        c.width,
        c.depth,
        weight_norm,
        norm_options=c.norm_options,
    )
    if weight_norm and WEIGHT_NORM_RECIPE.data_init:
        g = torch.Generator().manual_seed(c.seed + 7919)
        idx = torch.randperm(len(data.x_train), generator=g)[:INIT_BATCH]
        data_dependent_init(model.train(), data.x_train[idx])
    return model


def build_packed_classifier(cs: list[ClassifyConfig], data: ImageData) -> ConvNet:
    """The lab's ConvNet for the runs ``cs`` (one pack key) side by side; runs of several norms share it."""
    c0 = cs[0]
    return ConvNet(
        data.in_channels,
        data.num_classes,
        data.spatial_dims,
        [c.norm for c in cs],
        c0.width,
        c0.depth,
        uses_weight_norm(c0.norm, c0.weight_norm),
        copies=len(cs),
        norm_options=[c.norm_options for c in cs],
    )


def classifier_steps(c: ClassifyConfig, data: ImageData) -> int:
    """The run's training steps: budget x (steps, or its epochs' batches) x 2**doublings."""
    return base_steps(c, data) * 2**c.doublings


def base_steps(c: ClassifyConfig, data: ImageData) -> int:
    """The run's steps before doubling; its curve points are spaced by these, the same at every doubling."""
    return max(1, round(c.budget * (c.steps or c.epochs * math.ceil(len(data.x_train) / c.batch_size))))


def classifier_schedule(c: ClassifyConfig, data: ImageData, lr: float) -> Schedule:
    return Schedule(lr=lr, kind=c.lr_schedule, steps=classifier_steps(c, data), cooldown=c.cooldown)


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

    def state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos = state["order"], state["pos"]


def watched_layer(model: ConvNet) -> nn.Conv1d | nn.Conv2d:
    """The second conv, followed by a norm: the weight-decay study's layer."""
    return cast("nn.Conv1d | nn.Conv2d", model.features[3])  # ConvNet's layers: conv, norm, activation


class ClassifierTraining:
    """The lab's ConvNet alone: SGD with momentum on cross-entropy, a batch of the run's own order each step."""

    runs = 1

    def __init__(self, c: ClassifyConfig, data: ImageData, model: ConvNet, recorder: BatchStatRecorder | None) -> None:
        self.c, self.data, self.model, self.recorder = c, data, model, recorder
        self.device = torch.device(c.device)
        self.opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.schedule = classifier_schedule(c, data, c.lr)
        self.batches = BatchOrder(c, data.y_train)
        self.curves = new_classifier_curves()
        self.watched = watched_layer(model)

    def step(self, step: int, live: list[int], probe: bool) -> list[float]:
        idx = self.batches.next()
        x, y = self.data.x_train[idx].to(self.device), self.data.y_train[idx].to(self.device)
        lr = self.schedule.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.c.grad_predictiveness and probe:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.curves["grad_pred"] += gradient_predictiveness(
                self.model, lambda: F.cross_entropy(self.model(x), y), params, [lr] * len(params), whole_norm
            )
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return [float(loss.detach())]

    def stop(self, run: int) -> None:
        pass  # a run alone stops with the loop

    def record(self, step: int, run: int, loss: float) -> None:
        w2 = float(self.watched.weight.detach().square().sum())
        record_point(self.curves, step, loss, w2, self.schedule.lr_at(step))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "batches": self.batches.state(),
            "curves": self.curves,
            "recorder": self.recorder.state() if self.recorder else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model.train()
        self.opt.load_state_dict(state["opt"])
        self.batches.load(state["batches"])
        self.curves = state["curves"]
        if self.recorder is not None:
            self.recorder.load(state["recorder"])


def train_classifier(
    configs: list[RunConfig], saver: Saver | None = None, trunk: Trunk | None = None
) -> list[RunOutput]:
    """The ConvNet alone, at the budgets of ``configs`` (one run, ascending doublings: see :func:`run_ladder`)."""
    cs = of_kind(ClassifyConfig, configs)
    c = cs[-1]
    data = classifier_data(c)
    device = torch.device(c.device)
    model = build_classifier(c, data).to(device)
    before: dict[str, float] = {}
    if c.scale_invariance:
        before[SCALE_INVARIANCE_ERROR] = scale_invariance_error(
            model, watched_layer(model), data.x_train[:64].to(device)
        )
    last_norm = model.features[len(model.features) - 2]
    recorder = BatchStatRecorder(last_norm, channel_dim=1) if c.record_batch_stats else None
    training = ClassifierTraining(c, data, model, recorder)
    rungs = [classifier_schedule(rung, data, c.lr) for rung in cs]

    def evaluate(index: int, diverged: list[bool]) -> RunOutput:
        metrics = {**before, DIVERGED: float(diverged[0])}
        if recorder is not None:
            metrics.update(recorder.fluctuation(skip=min(20, rungs[index].steps // 4)))
        return evaluate_classifier(model, cs[index], data, metrics, training.curves)

    every = curve_every(base_steps(c, data), c.points)
    return fit_ladder(training, rungs, evaluate, every=every, saver=saver, trunk=trunk)


def curve_every(steps: int, points: int) -> int:
    """Steps between curve points: ``points`` of them over the run's steps before doubling."""
    return max(1, steps // points)


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
        metrics[VALID_ACC] = chance if metrics.get(DIVERGED) else accuracy(model, x_test, y_test)
        return metrics, curves
    if metrics.get(DIVERGED):
        chance = 1.0 / data.num_classes
        metrics.update({TEST_ACC: chance, TEST_ACC_BATCH_STATS: chance})
        return metrics, curves
    metrics[TEST_ACC] = accuracy(model, x_test, y_test)
    metrics[TRAIN_ACC] = accuracy(model, data.x_train.to(device), data.y_train.to(device))
    metrics[TRAIN_LOSS] = curves["loss"][-1] if curves["loss"] else float("nan")
    metrics[TEST_ACC_BATCH_STATS] = batch_stats_accuracy(model, x_test, y_test, c.test_batch)
    if c.contrast_strengths:
        curves["contrast_acc"] = contrast_curve(model, data, list(c.contrast_strengths), c.seed, device)
    if c.output_spread:
        metrics[OUTPUT_SPREAD] = output_spread(model, data, c.spread_batch, device)
    metrics[FINAL_WEIGHT_NORM] = curves["weight_norm"][-1]
    return metrics, curves


def _lm_batch(
    ids: Tensor, batch: int, seq_len: int, pad: int, g: torch.Generator, variable: bool
) -> tuple[Tensor, Tensor, Tensor]:
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


CURVE_BATCHES = 1  # held-out batches of 32 windows behind each point of the validation curve (the metrics: all 4)


def mixes_tokens(norm: str) -> bool:
    """Whether the language model's ``norm`` takes statistics across tokens (BatchNorm...): then the padding in a
    batch changes what it computes, so its model trains on the padded batch (an unknown name too)."""
    try:
        return is_batch_dependent(canonical_name(norm))
    except ValueError:
        return True


class CharLMTraining:
    """The character-level transformer: AdamW with warmup and gradient clipping on next-character loss.

    A model whose norms are per token trains on the real tokens only (:meth:`CharTransformer.forward_unpadded`: the
    same loss and gradients as the padded batch, up to float rounding, without the 37% of padded positions); a
    norm that mixes tokens (:func:`mixes_tokens`) sees the padded batch, padding included, as in PowerNorm's study
    (only its head runs on the real tokens: ``CharTransformer.forward(..., real_only=True)``)."""

    runs = 1

    def __init__(self, c: CharLMConfig) -> None:
        self.c, self.device = c, torch.device(c.device)
        self.unpadded = not mixes_tokens(c.norm)
        self.text = text = load_text()
        self.vocab, self.pad = len(text.vocab), len(text.vocab)
        self.model = CharTransformer(self.vocab, c.norm, c.dim, c.layers, max_len=c.seq_len).to(self.device)
        # the fused step (one kernel over every parameter) where torch has it: about a tenth of a CPU step
        fused = self.device.type in ("cpu", "cuda")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=0.0, fused=fused)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.recorder = (
            BatchStatRecorder(cast(nn.Module, self.model.blocks[-1].norm2), channel_dim=-1)
            if c.record_batch_stats
            else None
        )
        self.curves: dict[str, list[float]] = {"step": [], "loss": [], VALID_BPC: []}
        self.schedule = char_lm_schedule(c)
        vg = torch.Generator().manual_seed(1234)
        self.held_out = {
            split: [
                tuple(t.to(self.device) for t in _lm_batch(ids, 32, c.seq_len, self.pad, vg, False)) for _ in range(4)
            ]
            for split, ids in (("valid", text.valid), ("test", text.test))
            if split == "valid" or not c.validation_only
        }

    def bpc(self, split: str = "valid", batches: int | None = None) -> float:
        """Bits per character on the held-out ``split`` (valid or test), on its first ``batches`` batches of 32
        windows (all 4 by default), the model left in training mode."""
        self.model.eval()  # the recorder records in training mode only
        with torch.no_grad():
            held_out = self.held_out[split][:batches]
            losses = [float(F.cross_entropy(self.model(t, p).transpose(1, 2), y)) for t, y, p in held_out]
        self.model.train()
        return float(np.mean(losses)) / math.log(2)

    def step(self, step: int, live: list[int], probe: bool) -> list[float]:
        for group in self.opt.param_groups:
            group["lr"] = self.schedule.lr_at(step)
        batch = _lm_batch(self.text.train, self.c.batch_size, self.c.seq_len, self.pad, self.generator, True)
        tokens, targets, padding = (t.to(self.device) for t in batch)
        if self.unpadded:
            logits = self.model.forward_unpadded(tokens, padding)
        else:  # the padded batch, only the head on the real tokens (no loss reads the padding's logits)
            logits = self.model(tokens, padding, real_only=True)
        loss = F.cross_entropy(logits, targets[~padding])  # the mean over the real tokens' targets
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        return [float(loss.detach())]

    def stop(self, run: int) -> None:
        pass

    def record(self, step: int, run: int, loss: float) -> None:
        self.curves["step"].append(step)
        self.curves["loss"].append(loss / math.log(2))
        # the curve is a figure: one batch of the validation text (2048 characters) rather than the four the
        # metrics read: all four cost about 7% of the 20 steps between two points (30 ms against 20 x 21 ms)
        self.curves[VALID_BPC].append(self.bpc("valid", batches=CURVE_BATCHES))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "curves": self.curves,
            "generator": self.generator.get_state(),
            "recorder": self.recorder.state() if self.recorder else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model.train()
        self.opt.load_state_dict(state["opt"])
        self.curves = state["curves"]
        self.generator.set_state(state["generator"])
        if self.recorder is not None:
            self.recorder.load(state["recorder"])


def char_lm_base_steps(c: CharLMConfig) -> int:
    return max(1, round(c.budget * c.steps))


def char_lm_schedule(c: CharLMConfig) -> Schedule:
    """budget x steps x 2**doublings steps; the warmup is budget x warmup, whatever the doubling."""
    return Schedule(
        lr=c.lr,
        kind=c.lr_schedule,
        steps=char_lm_base_steps(c) * 2**c.doublings,
        warmup=round(c.budget * c.warmup),
        cooldown=c.cooldown,
    )


def train_char_lm(configs: list[RunConfig], saver: Saver | None = None, trunk: Trunk | None = None) -> list[RunOutput]:
    """The language model at the budgets of ``configs`` (one run, ascending doublings: see :func:`run_ladder`)."""
    cs = of_kind(CharLMConfig, configs)
    training = CharLMTraining(cs[-1])
    rungs = [char_lm_schedule(c) for c in cs]

    def evaluate(index: int, diverged: list[bool]) -> RunOutput:
        metrics: dict[str, float] = {DIVERGED: float(diverged[0])}
        if training.recorder is not None:
            metrics.update(training.recorder.fluctuation(skip=min(20, rungs[index].steps // 4)))
        for name, split in ((VALID_BPC, "valid"), (TEST_BPC, "test")):
            if split in training.held_out:
                metrics[name] = training.bpc(split) if not diverged[0] else math.log2(training.vocab)
        return metrics, training.curves

    every = curve_every(char_lm_base_steps(cs[-1]), cs[-1].points)
    return fit_ladder(training, rungs, evaluate, every=every, saver=saver, trunk=trunk)
