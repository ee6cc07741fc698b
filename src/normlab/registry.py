"""One name -> normalization table, so models (and the lab) take a norm by name: ``create_norm("group", 64)``.

Each entry builds a module for a feature map with ``spatial_dims`` spatial dims after ``(N, C)``
(0 for ``(N, C)`` features or ``(N, T, C)`` token sequences, 2 for images). Adding a method is one line in
``_REGISTRY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn as tnn

from . import nn as nl

__all__ = ["create_norm", "available_norms", "is_batch_dependent", "NormEntry"]


@dataclass(frozen=True)
class NormEntry:
    summary: str
    build: Callable[..., tnn.Module]
    batch_dependent: bool = False  # in training, does an example's output depend on the rest of its batch?


def _batch(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    cls = {0: nl.BatchNorm1d, 1: nl.BatchNorm1d, 2: nl.BatchNorm2d, 3: nl.BatchNorm3d}[spatial_dims]
    return cls(num_features, **kw)


def _layer(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    # On feature maps, the Group Norm paper's LayerNorm: one statistic per example over (C, *spatial), per-channel
    # affine, which is GroupNorm with a single group. On feature vectors, torch's LayerNorm over C.
    if spatial_dims == 0:
        return nl.LayerNorm(num_features, **kw)
    return nl.GroupNorm(1, num_features, **kw)


def _instance(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    if spatial_dims == 0:
        raise ValueError(
            "create_norm('instance'): InstanceNorm needs spatial dims (spatial_dims >= 1); feature vectors have one "
            "value per (example, channel), so there is nothing to normalize over"
        )
    kw.setdefault("affine", True)
    return {1: nl.InstanceNorm1d, 2: nl.InstanceNorm2d, 3: nl.InstanceNorm3d}[spatial_dims](num_features, **kw)


def _group(num_features: int, spatial_dims: int, num_groups: int = 32, **kw: Any) -> tnn.Module:
    return nl.GroupNorm(num_groups, num_features, **kw)


def _rms(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    if spatial_dims != 0:
        raise ValueError(
            "create_norm('rms'): RMSNorm normalizes the trailing feature dim of (N, *, C) inputs (spatial_dims=0); "
            "for channels-first feature maps use 'layer' or 'group'"
        )
    return nl.RMSNorm(num_features, **kw)


def _none(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    return tnn.Identity()


_REGISTRY: dict[str, NormEntry] = {
    "batch": NormEntry("BatchNorm: per channel over (N, *spatial); batch-dependent", _batch, batch_dependent=True),
    "layer": NormEntry("LayerNorm: per example over (C, *spatial), or over C for vectors", _layer),
    "instance": NormEntry("InstanceNorm: per (example, channel) over spatial positions", _instance),
    "group": NormEntry("GroupNorm: per (example, group of channels); num_groups=32 by default", _group),
    "rms": NormEntry("RMSNorm: LayerNorm without centering, over the trailing feature dim", _rms),
    "none": NormEntry("no normalization (identity), the baseline", _none),
}

_ALIASES = {"bn": "batch", "ln": "layer", "in": "instance", "gn": "group", "rmsnorm": "rms", "identity": "none"}


def available_norms() -> list[str]:
    """Names :func:`create_norm` accepts, sorted."""
    return sorted(_REGISTRY)


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or one of its aliases (``"bn"``, ``"gn"``, ...); ValueError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"norm name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown norm {name!r}; available: {', '.join(available_norms())}")
    return key


def is_batch_dependent(name: str) -> bool:
    """Whether the registered norm ``name`` mixes examples of a batch in training."""
    return _REGISTRY[canonical_name(name)].batch_dependent


def create_norm(name: str, num_features: int, *, spatial_dims: int = 2, **kwargs: Any) -> tnn.Module:
    """Build the normalization ``name`` for ``num_features`` channels.

    Args:
        name: a name from :func:`available_norms` (or an alias such as ``"bn"``, ``"gn"``).
        num_features: C, the channel / feature count.
        spatial_dims: spatial dims after (N, C): 0 for vectors and token sequences, 1-3 for feature maps.
            Default: 2.
        **kwargs: passed to the module (``eps``, ``momentum``, ``num_groups``, ``affine``, ...).
    """
    if spatial_dims not in (0, 1, 2, 3):
        raise ValueError(f"create_norm: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims!r}")
    return _REGISTRY[canonical_name(name)].build(num_features, spatial_dims, **kwargs)
