"""Measurements that change no step of a run's training: configurations that differ only in them (and in budget) are
one trajectory, trained once with every measurement any of them asks for, and each gets the metrics it asked for.

The language model's batch-statistics recorder (``record_batch_stats``, PowerNorm's fluctuation: a forward hook that
reads the last block's norm input) leaves its training the same bit for bit (tested), so the ``sequence`` study's
BatchNorm models at the fluctuation measure's rate and its tuned ones, when their chosen rate is that one, train once.
A ConvNet's recorder is not here: a hook takes a packed net off the fused step, which rounds otherwise.

    >>> from normlab.lab.config import make_config
    >>> from normlab.lab.training.measurements import union, without_measurements
    >>> plain = make_config("char_lm", study="sequence", norm="batch", seed=0)
    >>> recorded = make_config("char_lm", study="sequence", norm="batch", seed=0, record_batch_stats=True)
    >>> without_measurements(recorded) == plain and union([plain, recorded]) == recorded
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any, cast

from ..config import BudgetedConfig, RunConfig, RunOutput, at_doublings
from ..metrics import BATCH_MEAN_FLUCTUATION, BATCH_VAR_FLUCTUATION

__all__ = ["MEASUREMENTS", "without_measurements", "union", "measured", "as_asked", "supersets", "train_once"]

# task -> measurement field -> the metrics it adds
MEASUREMENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "char_lm": {"record_batch_stats": (BATCH_MEAN_FLUCTUATION, BATCH_VAR_FLUCTUATION)},
}


def _defaults(config: RunConfig) -> dict[str, Any]:
    """Each measurement of ``config``'s task with its value when off (its field's default)."""
    names = MEASUREMENTS.get(config.task, {})
    return {f.name: f.default for f in dataclasses.fields(config) if f.name in names} if names else {}


def without_measurements(config: RunConfig) -> RunConfig:
    """``config`` with every measurement of its task off: what its training is."""
    defaults = _defaults(config)
    return dataclasses.replace(config, **defaults) if defaults else config


def measured(config: RunConfig) -> tuple[str, ...]:
    """The measurements ``config`` asks for, by name, in a fixed order."""
    return tuple(name for name, off in _defaults(config).items() if getattr(config, name) != off)


def union(configs: Sequence[RunConfig]) -> RunConfig:
    """The first of ``configs`` (one training, :func:`without_measurements` equal) with every measurement any of them
    asks for."""
    asked: dict[str, Any] = {name: getattr(c, name) for c in configs for name in measured(c)}
    return dataclasses.replace(configs[0], **asked) if asked else configs[0]


def as_asked(output: RunOutput, trained: RunConfig, config: RunConfig) -> RunOutput:
    """``output`` of the run ``trained`` (with :func:`union`'s measurements) as ``config`` asked for it: without the
    metrics of the measurements it did not ask for, so a stored row is a function of its configuration alone."""
    extra = set(measured(trained)) - set(measured(config))
    if not extra:
        return output
    metrics, curves = output
    dropped = {name for field in extra for name in MEASUREMENTS[trained.task][field]}
    return {k: v for k, v in metrics.items() if k not in dropped}, curves


def train_once(configs: list[RunConfig], train: Callable[[list[RunConfig]], list[RunOutput]]) -> list[RunOutput]:
    """The outputs of ``configs`` (one run at one or several budgets, measurements aside), ``train`` called once
    with each budget among them by ascending ``doublings``, every measurement any of them asks for taken
    (:func:`union`); each output as its configuration asked for it (:func:`as_asked`)."""
    if len(configs) == 1:
        return train(configs)
    trained = union(configs)
    budgets = sorted({cast(BudgetedConfig, c).doublings for c in configs})
    outputs = dict(zip(budgets, train([at_doublings(trained, d) for d in budgets]), strict=True))
    return [as_asked(outputs[cast(BudgetedConfig, c).doublings], trained, c) for c in configs]


def supersets(config: RunConfig) -> list[tuple[str, ...]]:
    """The sets of measurements (each in a fixed order) that include ``config``'s, its own first: a kept trajectory
    that measured at least what ``config`` asks for can carry it on."""
    names = tuple(MEASUREMENTS.get(config.task, {}))
    own = set(measured(config))
    sets = [s for k in range(len(names) + 1) for s in combinations(names, k) if own <= set(s)]
    return sorted(sets, key=lambda s: (len(s), s))
