"""The run contract: one typed configuration per kind of run, every field of which is part of the stored key.

A study builds its runs with :func:`make_config`, and that typed object travels the run's whole path: the study's
plan, the sweep, the worker, the training code, which reads its fields and never a default of its own; changing
any field (width, depth, momentum, data size, steps...) changes the key and cannot reuse a stale row. Only the
store and ``results.json`` keep the configuration as a plain dict (:func:`as_dict`; :func:`from_dict` reads it
back).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "ClassifyConfig",
    "CharLMConfig",
    "DistributedConfig",
    "UserConfig",
    "RunConfig",
    "BudgetedConfig",
    "RunOutput",
    "make_config",
    "as_dict",
    "of_kind",
    "at_doublings",
    "from_dict",
]


@dataclass(frozen=True)
class _Common:
    study: str
    norm: str
    seed: int
    device: str = "cpu"
    data: str = "mnist1d"
    data_path: str | None = None
    variant: str | None = None  # a study's label when the norm name alone does not tell runs apart


@dataclass(frozen=True)
class ClassifyConfig(_Common):
    """The lab's ConvNet trained by SGD on image classification."""

    task: str = "classify"
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 1
    steps: int | None = None  # overrides epochs
    lr_schedule: str = "constant"  # "cosine": decays to 0 over the run; "wsd": warmup-stable-decay (loop.Schedule)
    cooldown: float = 0.2  # "wsd": the share of the steps the rate decays over
    width: int = 32
    depth: int = 3
    weight_norm: bool = False
    norm_options: dict[str, Any] | None = None  # extra constructor arguments (Ghost BN's virtual_batch_size...)
    train_subset: int | None = None
    validation_fraction: float = 0.0  # > 0: the last share of the training examples is held out, and the run
    # reports valid_* metrics on it instead of test_* (learning-rate selection never sees the test set)
    budget: float = 1.0  # the training steps are budget x (steps, or epochs over the training examples)
    doublings: int = 0  # ... x 2**doublings: the same run at twice, four times... its budget (curve points as at 0)
    stream: str = "iid"  # or "sorted": class-sorted chunks
    chunk: int = 100
    points: int = 40
    test_batch: int = 50
    scale_invariance: bool = False
    grad_predictiveness: bool = False
    record_batch_stats: bool = False
    output_spread: bool = False
    spread_batch: int = 16
    contrast_strengths: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CharLMConfig(_Common):
    """The character-level transformer trained by AdamW on CPython's pydoc text."""

    task: str = "char_lm"
    data: str = "pydoc-topics"
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    steps: int = 400
    lr_schedule: str = "constant"
    cooldown: float = 0.2
    warmup: int = 0
    budget: float = 1.0  # steps and warmup are budget x the fields'
    doublings: int = 0  # steps (not warmup) x 2**doublings
    dim: int = 64
    layers: int = 2
    points: int = 20
    record_batch_stats: bool = False  # record the last block's norm input's batch statistics (PowerNorm's measure)
    validation_only: bool = False  # a selection run: scored on the validation text, the test text never read


@dataclass(frozen=True)
class DistributedConfig(_Common):
    """The ConvNet trained data-parallel over ``nproc`` gloo ranks, one global batch a step."""

    task: str = "distributed"
    nproc: int = 4
    global_batch: int = 8
    sync: bool = False
    lr: float = 0.05
    momentum: float = 0.9
    steps: int = 300
    width: int = 32
    depth: int = 3
    points: int = 30
    record_losses: bool = False  # every step's loss of the global batch, for the exactness check


@dataclass(frozen=True)
class UserConfig(_Common):
    """The user's own model (``model``: a factory spec) on the user's own data (``data``: a data spec), its norms
    swapped for ``norm`` (``swap_from``: the kinds replaced; empty: the model as built)."""

    task: str = "user"
    model: str = ""
    model_args: dict[str, Any] | None = None
    swap_from: tuple[str, ...] = ()
    num_groups: int = 32
    fingerprint: str = ""  # a hash of the model's source and the data's files: edited inputs get new keys
    batch_size: int = 32
    optimizer: str = "sgd"  # or "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0  # never on norm parameters or biases (normlab.param_groups)
    epochs: int = 1
    steps: int | None = None  # overrides epochs
    lr_schedule: str = "cosine"
    cooldown: float = 0.2
    warmup: int = 0
    budget: float = 1.0
    doublings: int = 0
    validation_fraction: float = 0.0
    points: int = 20
    amp: bool = False  # bfloat16 autocast
    channels_last: bool = False
    loader_workers: int = 0


RunConfig = ClassifyConfig | CharLMConfig | DistributedConfig | UserConfig
BudgetedConfig = ClassifyConfig | CharLMConfig | UserConfig  # the runs with a budget (not the exactness runs)
RunOutput = tuple[dict[str, float], dict[str, list[float]]]  # (metrics, curves) of one run
_BY_TASK: dict[str, type] = {
    "classify": ClassifyConfig,
    "char_lm": CharLMConfig,
    "distributed": DistributedConfig,
    "user": UserConfig,
}
C = TypeVar("C", ClassifyConfig, CharLMConfig, DistributedConfig, UserConfig)
_TUPLES = ("contrast_strengths", "swap_from")  # tuples in the dataclasses, lists in JSON


def make_config(task: str = "classify", **fields: Any) -> RunConfig:
    """A run's full configuration: the task's dataclass, defaults filled in.

    Unknown fields raise TypeError (a typo must not become a silently ignored key).
    """
    if task not in _BY_TASK:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(_BY_TASK)}")
    config: RunConfig = _BY_TASK[task](task=task, **_with_tuples(fields))
    return config


def of_kind(kind: type[C], configs: Sequence[RunConfig]) -> list[C]:
    """``configs``, each checked to be a ``kind`` (the training code of one task takes only its own kind)."""
    wrong = [type(c).__name__ for c in configs if not isinstance(c, kind)]
    if wrong:
        raise TypeError(f"expected {kind.__name__} configurations, got {', '.join(wrong)}")
    return list(configs)  # type: ignore[arg-type]  # every element checked above


def at_doublings(config: RunConfig, doublings: int) -> RunConfig:
    """The same run at budget x 2**``doublings`` (a run of a task with budgets)."""
    if not isinstance(config, BudgetedConfig):
        raise TypeError(f"a {type(config).__name__} has no budget")
    return dataclasses.replace(config, doublings=doublings)


def as_dict(config: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The plain form the store, the keys and ``results.json`` keep: every field, tuples as lists (a stored dict
    is returned as a copy)."""
    if isinstance(config, Mapping):
        return dict(config)
    # every field is a value, a tuple of values or a dict of them (no nested dataclass): copied without
    # dataclasses.asdict's recursion, which took 12x as long and most of a judge pass
    plain = {
        f.name: copy.deepcopy(v) if isinstance(v, (dict, list)) else v
        for f in dataclasses.fields(config)
        for v in [getattr(config, f.name)]
    }
    return {k: list(v) if k in _TUPLES and v is not None else v for k, v in plain.items()}


def _with_tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in fields.items()}


def from_dict(config: Mapping[str, Any]) -> RunConfig:
    """The typed object for a stored configuration dict (:func:`as_dict`'s inverse)."""
    cls = _BY_TASK.get(config.get("task", ""))
    if cls is None:
        raise ValueError(f"unknown task {config.get('task')!r}; expected one of {sorted(_BY_TASK)}")
    return cls(**_with_tuples(config))
