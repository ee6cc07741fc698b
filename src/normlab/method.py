"""What normlab knows about one normalization method, in one record: :class:`Method`.

The registry (:mod:`normlab.registry`) holds one record per method; ``create_norm``, ``normlab explain`` and its
figure, the lab's model builders, the CLI's choices, the README's methods table and the all-methods tests read it,
and nothing else keeps a table keyed by method name.

Vocabulary shared by every method's constructor: ``num_features`` (channels), ``num_groups`` (groups of channels),
``eps``, ``momentum``, ``affine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from torch import nn as tnn

__all__ = ["Method", "Recipe", "NO_RECIPE", "STATISTICS", "SAME_IN_EVAL", "BN_TRAIN_EVAL", "STANDARDIZE"]

# The reference's statistic layouts (normlab.reference.layout), by the sets a statistic is taken over, and what
# each says about batch dependence. A method's ``statistics`` is one of these keys, or None (no statistics over
# sets of values: elementwise, weight-level or windowed methods).
STATISTICS: dict[str, tuple[bool, str]] = {
    "batch": (True, "yes: each statistic mixes all N examples, so in training an example's output depends on the "
                    "rest of its batch (and is undefined with one value per channel)"),
    "ghost": (True, "yes, within each virtual batch of examples"),
    "instance": (False, "no: each statistic uses one channel of one example"),
    "group": (False, "no: each statistic uses one group of channels of one example"),
    "layer": (False, "no: each statistic uses one example only"),
    "position": (False, "no: each statistic uses the channels of one example at one position"),
}  # fmt: skip

SAME_IN_EVAL = "identical in training and eval"
BN_TRAIN_EVAL = (
    "training normalizes with the batch statistics and updates running estimates (unbiased variance); eval "
    "normalizes with the running estimates"
)
STANDARDIZE = "y = (x - mean) / sqrt(var + eps) * gamma + beta"

Builder = Callable[..., tnn.Module]  # (num_features, spatial_dims, **kwargs) -> module
Reference = Callable[[tnn.Module, np.ndarray], np.ndarray]  # (module, float64 input) -> float64 training output


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How a method's paper trains with it, beyond its constructor's defaults: what a fair comparison gives it.

    Args:
        source: where the recipe is published (paper and section).
        options: constructor arguments in every model.
        role_options: constructor arguments by the norm's role in a transformer block (``"attention"``: the norm
            before attention; ``"mlp"``: before the MLP; ``"final"``: before the head), over ``options``.
        weight_norm: the paper uses the method with Weight Normalization on every conv and linear layer.
        data_init: weight-normalized layers start from the paper's data-dependent initialization
            (:func:`normlab.nn.data_dependent_init`).
    """

    source: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    role_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    weight_norm: bool = False
    data_init: bool = False

    def options_for(self, role: str | None = None) -> dict[str, Any]:
        """The constructor arguments for a norm in ``role`` (None: outside a transformer block)."""
        return {**self.options, **(self.role_options.get(role, {}) if role else {})}


NO_RECIPE = Recipe()


@dataclass(frozen=True)
class Method:
    """One normalization method, described once.

    Args:
        name: the registry name (``create_norm(name, ...)``, ``--norms name``).
        title: the method's name in prose ("GroupNorm").
        summary: one line for ``normlab norms`` and the README table.
        paper: who published it, and when.
        modules: the ``normlab.nn`` classes, as the README lists them.
        build: ``(num_features, spatial_dims, **kwargs) -> module``; called only for ``spatial_dims`` in
            ``spatial_dims``.
        formula: the forward, one line of text (``normlab explain``).
        aliases: other names ``create_norm`` accepts.
        statistics: the sets a statistic is taken over (a key of :data:`STATISTICS`), for ``explain`` and its
            figure; None for methods without statistics over sets of values.
        center: whether the statistics include a mean (False: mean squares).
        batch_dependent: whether an example's training output depends on the rest of its batch; None derives it
            from ``statistics``.
        dependence: ``explain``'s sentence on batch dependence; "" derives it from ``statistics``.
        train_eval: how training and eval differ.
        spatial_dims: the spatial dims after ``(N, C)`` it applies to (0: feature vectors and token sequences).
        not_applicable: why it does not apply to the other spatial dims (the error ``create_norm`` raises).
        grouped: takes ``num_groups``.
        fused_activation: computes its own nonlinearity (FRN's TLU, EvoNorm), so it replaces a norm *and* the
            activation after it: a model should not add another.
        conv: weight-level methods: ``spatial_dims -> conv class`` a model should use before the norm.
        pack: how K models' norms run as one module over their channels side by side (the lab's packed engine):
            ``(method, num_features, spatial_dims, copies, **kwargs) -> module``; None where a statistic or a
            parameter would mix the models (a shared scalar, a window across channels).
        pack_dims: the spatial dims ``pack`` applies to.
        reference: the float64 training-mode forward from a built module's parameters and buffers
            (:mod:`normlab.reference`), called before the module runs; the all-methods tests compare with it.
        defaults: constructor arguments ``create_norm`` gives unless the caller does.
        recipe: how its paper trains with it (:class:`Recipe`); the lab's models follow it.
    """

    name: str
    title: str
    summary: str
    paper: str
    modules: str
    build: Builder
    formula: str
    reference: Reference
    aliases: tuple[str, ...] = ()
    statistics: str | None = None
    center: bool = True
    batch_dependent: bool | None = None
    dependence: str = ""
    train_eval: str = SAME_IN_EVAL
    spatial_dims: tuple[int, ...] = (0, 1, 2, 3)
    not_applicable: str = ""
    grouped: bool = False
    fused_activation: bool = False
    conv: Callable[[int], Callable[..., tnn.Module]] | None = None
    pack: Callable[..., tnn.Module] | None = None
    pack_dims: tuple[int, ...] = (0, 1, 2, 3)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    recipe: Recipe = NO_RECIPE

    def __post_init__(self) -> None:
        if self.statistics is not None and self.statistics not in STATISTICS:
            raise ValueError(f"Method {self.name!r}: statistics must be one of {sorted(STATISTICS)} or None")
        if self.statistics is None and self.batch_dependent is None:
            raise ValueError(f"Method {self.name!r}: without statistics, say batch_dependent explicitly")
        if set(self.spatial_dims) != {0, 1, 2, 3} and not self.not_applicable:
            raise ValueError(f"Method {self.name!r}: say why it does not apply to every spatial_dims (not_applicable)")

    @property
    def is_batch_dependent(self) -> bool:
        """In training, does an example's output depend on the rest of its batch?"""
        if self.batch_dependent is not None:
            return self.batch_dependent
        return STATISTICS[self.statistics][0]

    @property
    def dependence_text(self) -> str:
        if self.dependence:
            return self.dependence
        if self.statistics is None:
            return "yes" if self.is_batch_dependent else "no"
        return STATISTICS[self.statistics][1]

    def applies_to(self, spatial_dims: int) -> bool:
        return spatial_dims in self.spatial_dims

    def can_pack(self, spatial_dims: int) -> bool:
        return self.pack is not None and spatial_dims in self.pack_dims and self.applies_to(spatial_dims)


def ranked(classes: Mapping[int, type]) -> Builder:
    """A builder picking the class by ``spatial_dims`` (feature vectors, 0, use the 1-d class)."""

    def build(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
        return classes[max(spatial_dims, 1)](num_features, **kw)

    return build


def single(cls: type) -> Builder:
    """A builder for a class that takes any spatial dims."""

    def build(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
        return cls(num_features, **kw)

    return build


def pack_channels(method: Method, num_features: int, spatial_dims: int, copies: int, **kw: Any) -> tnn.Module:
    """Per-channel statistics and parameters: K models' C channels side by side are one module of K*C channels."""
    return method.build(copies * num_features, spatial_dims, **{**method.defaults, **kw})


def pack_groups(method: Method, num_features: int, spatial_dims: int, copies: int, **kw: Any) -> tnn.Module:
    """Statistics per group of channels: K models of G groups each are one module of K*G groups over K*C channels."""
    if "num_groups" not in kw:
        raise ValueError(f"packing {method.name!r} needs its num_groups given explicitly")
    return method.build(copies * num_features, spatial_dims, **{**kw, "num_groups": copies * kw["num_groups"]})


def params(module: tnn.Module, *names: str) -> list[np.ndarray | None]:
    """The module's tensors ``names`` (parameters or buffers) as float64 arrays; None for an absent one."""
    out = []
    for name in names:
        t = getattr(module, name, None)
        out.append(None if t is None else t.detach().double().cpu().numpy())
    return out
