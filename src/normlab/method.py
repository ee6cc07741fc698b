"""What normlab knows about one normalization method, in one record: :class:`Method`.

The registry (:mod:`normlab.registry`) holds one record per method; ``create_norm``, ``normlab explain`` and its
figure, the lab's model builders, the CLI's choices, the README's methods table and the all-methods tests read it,
and nothing else keeps a table keyed by method name.

Vocabulary shared by every method's constructor: ``num_features`` (channels), ``num_groups`` (groups of channels),
``eps``, ``momentum``, ``affine``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from torch import nn as tnn

from .reference.layout import (
    Layout,
    batch_layout,
    channel_layout,
    ghost_layout,
    group_layout,
    instance_layout,
    layer_layout,
)

__all__ = [
    "Method",
    "Recipe",
    "NO_RECIPE",
    "StatisticsLayout",
    "STATISTICS",
    "BATCH",
    "GHOST",
    "INSTANCE",
    "GROUP",
    "LAYER",
    "POSITION",
    "SAME_IN_EVAL",
    "BN_TRAIN_EVAL",
    "STANDARDIZE",
]

Factors = list[tuple[str, int]]  # (axis name, size) pairs, in order; their product is a count


@dataclass(frozen=True, kw_only=True, eq=False)
class StatisticsLayout:
    """The sets a method's statistics are taken over (the Group Norm paper's S_i): a :class:`Method`'s
    ``statistics`` is one of the objects in :data:`STATISTICS`, or None.

    For an input shape it gives the :class:`~normlab.reference.layout.Layout` the float64 reference computes with,
    and the named factors ``normlab explain`` prints, so the text, the cube figure and the math are one object's.

    Args:
        name: a short name ("batch", "group", ...), for messages and reprs.
        batch_dependent: whether one statistic mixes examples of a batch (what every layout it gives says).
        dependence: ``explain``'s sentence on batch dependence.
        sized_by: the setting that sizes the sets, passed as ``size`` below: ``"num_groups"`` (G),
            ``"virtual_batch_size"`` (V) or ``"normalized_dims"`` (how many trailing dims); None for none.
        layout: ``(shape, size) -> Layout`` of an input of ``shape``.
        factors: ``(axes, size) -> (over, count)`` from the input's named axes ``[("N", 8), ("C", 64), ...]``: the
            factors of the values per statistic and of the number of statistics.
    """

    name: str
    batch_dependent: bool
    dependence: str
    sized_by: str | None = None
    layout: Callable[[tuple[int, ...], int | None], Layout] = field(repr=False)
    factors: Callable[[Factors, int | None], tuple[Factors, Factors]] = field(repr=False)


def _ghost_factors(axes: Factors, size: int | None) -> tuple[Factors, Factors]:
    size = cast(int, size)  # sized_by is set: the caller passes virtual_batch_size
    return [("V", size)] + axes[2:], [("N/V", axes[0][1] // size), axes[1]]


def _group_factors(axes: Factors, size: int | None) -> tuple[Factors, Factors]:
    size = cast(int, size)  # sized_by is set: the caller passes num_groups
    return [("C/G", axes[1][1] // size)] + axes[2:], [axes[0], ("G", size)]


def _layer_factors(axes: Factors, size: int | None) -> tuple[Factors, Factors]:
    split = len(axes) - cast(int, size)  # sized_by is set: the caller passes normalized_dims
    return axes[split:], axes[:split]


BATCH = StatisticsLayout(
    name="batch",
    batch_dependent=True,
    dependence="yes: each statistic mixes all N examples, so in training an "
    "example's output depends on the rest of its batch (and is undefined with one value per channel)",
    layout=lambda shape, size: batch_layout(shape),
    factors=lambda axes, size: ([axes[0]] + axes[2:], [axes[1]]),
)
GHOST = StatisticsLayout(
    name="ghost",
    batch_dependent=True,
    dependence="yes, within each virtual batch of examples",
    sized_by="virtual_batch_size",
    layout=lambda shape, size: ghost_layout(shape, cast(int, size)),
    factors=_ghost_factors,
)
INSTANCE = StatisticsLayout(
    name="instance",
    batch_dependent=False,
    dependence="no: each statistic uses one channel of one example",
    layout=lambda shape, size: instance_layout(shape),
    factors=lambda axes, size: (axes[2:], axes[:2]),
)
GROUP = StatisticsLayout(
    name="group",
    batch_dependent=False,
    dependence="no: each statistic uses one group of channels of one example",
    sized_by="num_groups",
    layout=lambda shape, size: group_layout(shape, cast(int, size)),
    factors=_group_factors,
)
LAYER = StatisticsLayout(
    name="layer",
    batch_dependent=False,
    dependence="no: each statistic uses one example only",
    sized_by="normalized_dims",
    layout=lambda shape, size: layer_layout(shape, shape[len(shape) - cast(int, size) :]),
    factors=_layer_factors,
)
POSITION = StatisticsLayout(
    name="position",
    batch_dependent=False,
    dependence="no: each statistic uses the channels of one example at one position",
    layout=lambda shape, size: channel_layout(shape),
    factors=lambda axes, size: ([axes[1]], [axes[0]] + axes[2:]),
)
STATISTICS: tuple[StatisticsLayout, ...] = (BATCH, GHOST, INSTANCE, GROUP, LAYER, POSITION)
"""Every statistics layout a method can have (the reference's layouts, :mod:`normlab.reference.layout`)."""

SAME_IN_EVAL = "identical in training and eval"
BN_TRAIN_EVAL = (
    "training normalizes with the batch statistics and updates running estimates (unbiased variance); eval "
    "normalizes with the running estimates"
)
STANDARDIZE = "y = (x - mean) / sqrt(var + eps) * gamma + beta"

Builder = Callable[..., tnn.Module]  # (num_features, spatial_dims, **kwargs) -> module
# (module, float64 input) -> float64 training output; the module is the one this record's build made, so its class
# (and the attributes the reference reads) differs by record: Any
Reference = Callable[[Any, np.ndarray], np.ndarray]


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


@dataclass(frozen=True, kw_only=True)
class Method:
    """One normalization method, described once. Every field is a keyword argument.

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
        statistics: the sets a statistic is taken over, a :class:`StatisticsLayout` of :data:`STATISTICS`
            (``BATCH``, ``GROUP``...), for ``explain`` and its figure; None for methods without statistics over
            sets of values.
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
    statistics: StatisticsLayout | None = None
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
            raise ValueError(
                f"Method {self.name!r}: statistics must be one of normlab.method.STATISTICS "
                f"({', '.join(s.name.upper() for s in STATISTICS)}) or None"
            )
        if self.statistics is None and self.batch_dependent is None:
            raise ValueError(f"Method {self.name!r}: without statistics, say batch_dependent explicitly")
        if set(self.spatial_dims) != {0, 1, 2, 3} and not self.not_applicable:
            raise ValueError(f"Method {self.name!r}: say why it does not apply to every spatial_dims (not_applicable)")

    @property
    def is_batch_dependent(self) -> bool:
        """In training, does an example's output depend on the rest of its batch?"""
        if self.batch_dependent is not None:
            return self.batch_dependent
        # __post_init__: a record without statistics says batch_dependent
        return cast(StatisticsLayout, self.statistics).batch_dependent

    @property
    def dependence_text(self) -> str:
        if self.dependence:
            return self.dependence
        if self.statistics is None:
            return "yes" if self.is_batch_dependent else "no"
        return self.statistics.dependence

    def applies_to(self, spatial_dims: int) -> bool:
        return spatial_dims in self.spatial_dims

    def can_pack(self, spatial_dims: int) -> bool:
        return self.pack is not None and spatial_dims in self.pack_dims and self.applies_to(spatial_dims)


def ranked(classes: Mapping[int, type[tnn.Module]]) -> Builder:
    """A builder picking the class by ``spatial_dims`` (feature vectors, 0, use the 1-d class)."""

    def build(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
        return classes[max(spatial_dims, 1)](num_features, **kw)

    return build


def single(cls: type[tnn.Module]) -> Builder:
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
    out: list[np.ndarray | None] = []
    for name in names:
        t = getattr(module, name, None)
        out.append(None if t is None else t.detach().double().cpu().numpy())
    return out
