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

__all__ = [
    "create_norm", "create_packed_norm", "can_pack", "group_kwarg", "available_norms", "is_batch_dependent",
    "conv_layer", "NormEntry",
]


@dataclass(frozen=True)
class NormEntry:
    summary: str
    build: Callable[..., tnn.Module]
    batch_dependent: bool = False  # in training, does an example's output depend on the rest of its batch?
    conv: Callable[..., tnn.Module] | None = None  # weight-level methods: how to build the layers before the norm
    groups_arg: str | None = None  # the constructor argument that sets the group count, for grouped methods
    # How K independent models' norms run as one module over their channels side by side (the lab's packed
    # engine), given the entry: None where a statistic or parameter would mix models (a shared scalar, a window
    # across channels).
    pack: Callable[..., tnn.Module] | None = None


def _ranked(classes: dict[int, type], name: str) -> Callable[..., tnn.Module]:
    """A builder picking the 1d/2d/3d class by ``spatial_dims`` (vectors use the 1d class)."""

    def build(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
        return classes[max(spatial_dims, 1)](num_features, **kw)

    build.__name__ = f"_{name}"
    return build


def _needs_spatial(name: str, build: Callable[..., tnn.Module]) -> Callable[..., tnn.Module]:
    def checked(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
        if spatial_dims == 0:
            raise ValueError(
                f"create_norm({name!r}): it normalizes each channel over spatial positions (spatial_dims >= 1); "
                "feature vectors and tokens have none"
            )
        return build(num_features, **kw)

    return checked


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


def _dyt(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    return nl.DynamicTanh(num_features, channels_last=spatial_dims == 0, **kw)


def _frozen(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    if spatial_dims != 2:
        raise ValueError("create_norm('frozen'): FrozenBatchNorm2d takes (N, C, H, W) feature maps (spatial_dims=2)")
    return nl.FrozenBatchNorm2d(num_features, **kw)


def _pack_channels(entry: NormEntry, num_features: int, spatial_dims: int, copies: int, **kw: Any) -> tnn.Module:
    """Per-channel statistics and parameters: K models' C channels side by side are one module of K*C channels."""
    return entry.build(copies * num_features, spatial_dims, **kw)


def _pack_groups(entry: NormEntry, num_features: int, spatial_dims: int, copies: int, **kw: Any) -> tnn.Module:
    """Statistics per group of channels: K models of G groups each are one module of K*G groups over K*C channels."""
    key = entry.groups_arg
    if key not in kw:
        raise ValueError(f"packing a grouped norm needs its {key} given explicitly")
    kw[key] = copies * kw[key]
    return entry.build(copies * num_features, spatial_dims, **kw)


def _pack_layer(entry: NormEntry, num_features: int, spatial_dims: int, copies: int, **kw: Any) -> tnn.Module:
    if spatial_dims == 0:
        raise ValueError("create_packed_norm('layer'): LayerNorm over token features does not pack over channels")
    return nl.GroupNorm(copies, copies * num_features, **kw)  # one group (one statistic per example) per model


def _std_conv(spatial_dims: int) -> Callable[..., tnn.Module]:
    if spatial_dims not in (1, 2):
        raise ValueError("Weight Standardization: StdConv1d/StdConv2d exist for spatial_dims 1 and 2")
    return {1: nl.StdConv1d, 2: nl.StdConv2d}[spatial_dims]


def _spectral_conv(spatial_dims: int) -> Callable[..., tnn.Module]:
    conv = {1: tnn.Conv1d, 2: tnn.Conv2d, 3: tnn.Conv3d}[spatial_dims]
    return lambda *args, **kw: nl.spectral_norm(conv(*args, **kw))


_REGISTRY: dict[str, NormEntry] = {
    "batch": NormEntry(
        "BatchNorm: per channel over (N, *spatial); batch-dependent",
        _ranked({1: nl.BatchNorm1d, 2: nl.BatchNorm2d, 3: nl.BatchNorm3d}, "batch"), batch_dependent=True,
        pack=_pack_channels,
    ),
    "layer": NormEntry("LayerNorm: per example over (C, *spatial), or over C for vectors", _layer, pack=_pack_layer),
    "instance": NormEntry("InstanceNorm: per (example, channel) over spatial positions", _instance,
                          pack=_pack_channels),
    "group": NormEntry("GroupNorm: per (example, group of channels); num_groups=32 by default", _group,
                       groups_arg="num_groups", pack=_pack_groups),
    "rms": NormEntry("RMSNorm: LayerNorm without centering, over the trailing feature dim", _rms),
    "none": NormEntry("no normalization (identity), the baseline", _none, pack=_pack_channels),
    "batchrenorm": NormEntry(
        "Batch Renormalization: BN corrected towards running statistics (r, d clipped)",
        _ranked({1: nl.BatchRenorm1d, 2: nl.BatchRenorm2d, 3: nl.BatchRenorm3d}, "batchrenorm"), batch_dependent=True,
        pack=_pack_channels,
    ),
    "ghost": NormEntry(
        "Ghost BatchNorm: BN over virtual batches (virtual_batch_size=32)",
        _ranked({1: nl.GhostBatchNorm1d, 2: nl.GhostBatchNorm2d, 3: nl.GhostBatchNorm3d}, "ghost"), batch_dependent=True,
        pack=_pack_channels,
    ),
    "power": NormEntry("PowerNorm: running quadratic mean, no centering, approximate backward",
                       lambda c, s, **kw: nl.PowerNorm(c, **kw), batch_dependent=True,
                       pack=_pack_channels),
    "frn": NormEntry("Filter Response Normalization + TLU: per (example, channel) mean square",
                     _needs_spatial("frn", nl.FilterResponseNorm),
                     pack=_pack_channels),
    "evonorm_b0": NormEntry("EvoNorm-B0: batch variance vs instance term, fused activation",
                            _needs_spatial("evonorm_b0", nl.EvoNormB0), batch_dependent=True,
                            pack=_pack_channels),
    "evonorm_s0": NormEntry("EvoNorm-S0: group variance with a swish-like numerator",
                            _needs_spatial("evonorm_s0", nl.EvoNormS0), groups_arg="groups", pack=_pack_groups),
    "switchable": NormEntry("Switchable Normalization: learned mixture of IN, LN and BN statistics",
                            _needs_spatial("switchable", nl.SwitchableNorm), batch_dependent=True),
    "dyt": NormEntry("DyT: gamma * tanh(alpha * x) + beta, no statistics", _dyt),
    "lrn": NormEntry("Local Response Normalization across a window of 5 channels",
                     _needs_spatial("lrn", lambda c, size=5, **kw: nl.LocalResponseNorm(size, **kw))),
    "frozen": NormEntry("FrozenBatchNorm2d: fixed statistics and affine (fine-tuning)", _frozen),
    "ws": NormEntry("Weight Standardization convs followed by GroupNorm (Qiao et al.)", _group, conv=_std_conv,
                    groups_arg="num_groups", pack=_pack_groups),
    "spectral": NormEntry("Spectral Normalization of the convs, no activation norm", _none, conv=_spectral_conv),
}

_ALIASES = {
    "bn": "batch", "ln": "layer", "in": "instance", "gn": "group", "rmsnorm": "rms", "identity": "none",
    "brn": "batchrenorm", "batch_renorm": "batchrenorm", "ghostbn": "ghost", "powernorm": "power", "pn": "power",
    "sn": "switchable", "evonorm-b0": "evonorm_b0", "evonorm-s0": "evonorm_s0", "b0": "evonorm_b0",
    "s0": "evonorm_s0", "dynamic_tanh": "dyt", "frozenbn": "frozen",
}  # fmt: skip


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


_ACTIVATIONS: dict[str, Callable[[], tnn.Module]] = {
    "relu": lambda: tnn.ReLU(inplace=False), "gelu": tnn.GELU, "silu": tnn.SiLU, "tanh": tnn.Tanh,
    "leaky_relu": tnn.LeakyReLU, "identity": tnn.Identity,
}  # fmt: skip


def _activation(act: str | tnn.Module | type) -> tnn.Module:
    if isinstance(act, tnn.Module):
        return act
    if isinstance(act, type) and issubclass(act, tnn.Module):
        return act()
    if isinstance(act, str) and act.lower() in _ACTIVATIONS:
        return _ACTIVATIONS[act.lower()]()
    raise ValueError(f"create_norm: act must be a module, a module class or one of {sorted(_ACTIVATIONS)}, got {act!r}")


_WITH_ACT: dict[type, type] = {}


def _with_activation(norm: tnn.Module, act: tnn.Module) -> tnn.Module:
    """timm's norm+act: the same module (same state_dict keys) whose forward ends with ``act``."""
    if isinstance(norm, tnn.Identity):
        return act
    cls = type(norm)
    if cls not in _WITH_ACT:
        _WITH_ACT[cls] = type(f"{cls.__name__}Act", (cls,), {"forward": lambda self, x: self.act(cls.forward(self, x))})
    norm.__class__ = _WITH_ACT[cls]
    norm.act = act
    return norm


def conv_layer(name: str, spatial_dims: int) -> Callable[..., tnn.Module] | None:
    """For weight-level methods (``ws``, ``spectral``): the conv class (or factory) a model should use; else None."""
    entry = _REGISTRY[canonical_name(name)]
    return None if entry.conv is None else entry.conv(spatial_dims)


def group_kwarg(name: str) -> str | None:
    """The constructor argument that sets a grouped method's group count (None for methods without groups)."""
    return _REGISTRY[canonical_name(name)].groups_arg


def can_pack(name: str, spatial_dims: int) -> bool:
    """Whether K models' ``name`` norms run exactly as one module over their channels side by side."""
    entry = _REGISTRY[canonical_name(name)]
    return entry.pack is not None and not (canonical_name(name) == "layer" and spatial_dims == 0)


def create_packed_norm(name: str, num_features: int, copies: int, *, spatial_dims: int = 2, **kwargs: Any) -> tnn.Module:
    """``copies`` independent ``name`` norms of ``num_features`` channels each, as one module over
    ``copies * num_features`` channels (model k owns channels ``k*C .. (k+1)*C - 1``). Each model's statistics and
    parameters stay its own: the packed module computes exactly what the ``copies`` modules compute alone.
    ValueError for methods that do not pack (see :func:`can_pack`)."""
    if not can_pack(name, spatial_dims):
        raise ValueError(f"create_packed_norm: {name!r} does not pack over channels (spatial_dims={spatial_dims})")
    entry = _REGISTRY[canonical_name(name)]
    return entry.pack(entry, num_features, spatial_dims, copies, **kwargs)


def create_norm(
    name: str, num_features: int, *, spatial_dims: int = 2, act: str | tnn.Module | type | None = None, **kwargs: Any
) -> tnn.Module:
    """Build the normalization ``name`` for ``num_features`` channels.

    Args:
        name: a name from :func:`available_norms` (or an alias such as ``"bn"``, ``"gn"``).
        num_features: C, the channel / feature count.
        spatial_dims: spatial dims after (N, C): 0 for vectors and token sequences, 1-3 for feature maps.
            Default: 2.
        act: an activation fused after the norm (timm's norm+act): a name (``"relu"``, ``"gelu"``, ``"silu"``...),
            a module or a module class. The norm's state_dict keys are unchanged.
        **kwargs: passed to the module (``eps``, ``momentum``, ``num_groups``, ``affine``, ...).
    """
    if spatial_dims not in (0, 1, 2, 3):
        raise ValueError(f"create_norm: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims!r}")
    norm = _REGISTRY[canonical_name(name)].build(num_features, spatial_dims, **kwargs)
    return norm if act is None else _with_activation(norm, _activation(act))
