"""Every method normlab ships, one :class:`~normlab.method.Method` record each, and the lookups that read them.

``create_norm("group", 64)`` builds a module for a feature map with ``spatial_dims`` spatial dims after ``(N, C)``
(0 for ``(N, C)`` features or ``(N, T, C)`` token sequences, 2 for images). ``normlab explain``, the lab, the CLI
and the README's methods table read the same records. Adding a method is its module, its test file and one record
in ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn as tnn

from . import nn as nl
from . import reference as R
from .method import (
    BATCH,
    BN_TRAIN_EVAL,
    GHOST,
    GROUP,
    INSTANCE,
    LAYER,
    POSITION,
    STANDARDIZE,
    Method,
    Recipe,
    pack_channels,
    pack_groups,
    params,
    ranked,
    single,
)
from .nn.norm_act import with_activation

__all__ = [
    "METHODS",
    "Method",
    "create_norm",
    "create_packed_norm",
    "can_pack",
    "available_norms",
    "canonical_name",
    "get_method",
    "is_batch_dependent",
    "conv_layer",
    "methods_table",
    "DYT_RECIPE",
    "WEIGHT_NORM_RECIPE",
]

_ON_MAPS = "it normalizes each channel over spatial positions (spatial_dims >= 1); feature vectors and tokens have none"


def _layer(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    # On feature maps, the Group Norm paper's LayerNorm: one statistic per example over (C, *spatial), per-channel
    # affine, which is GroupNorm with a single group. On feature vectors, torch's LayerNorm over C.
    if spatial_dims == 0:
        return nl.LayerNorm(num_features, **kw)
    return nl.GroupNorm(1, num_features, **kw)


def _layer_reference(m: nl.LayerNorm | nl.GroupNorm, x: np.ndarray) -> np.ndarray:
    weight, bias = params(m, "weight", "bias")
    if isinstance(m, nl.GroupNorm):
        return R.group_norm(x, 1, weight, bias, m.eps)[0]
    return R.layer_norm(x, m.normalized_shape, weight, bias, m.eps)[0]


def _group(num_features: int, spatial_dims: int, num_groups: int = 32, **kw: Any) -> tnn.Module:
    return nl.GroupNorm(num_groups, num_features, **kw)


def _none(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    return tnn.Identity()


def _dyt(num_features: int, spatial_dims: int, **kw: Any) -> tnn.Module:
    return nl.DynamicTanh(num_features, channels_last=spatial_dims == 0, **kw)


def _dyt_reference(m: nl.DynamicTanh, x: np.ndarray) -> np.ndarray:
    alpha, w, b = cast(list[np.ndarray], params(m, "alpha", "weight", "bias"))  # DyT always holds all three
    if not m.channels_last:
        w, b = (p.reshape((-1,) + (1,) * (x.ndim - 2)) for p in (w, b))
    return R.response.dynamic_tanh(x, float(alpha[0]), w, b)


def _lrn(num_features: int, spatial_dims: int, size: int = 5, **kw: Any) -> tnn.Module:
    return nl.LocalResponseNorm(size, **kw)


def _pack_layer(method: Method, num_features: int, spatial_dims: int, copies: int, **kw: Any) -> tnn.Module:
    return nl.GroupNorm(copies, copies * num_features, **kw)  # one group (one statistic per example) per model


def _std_conv(spatial_dims: int) -> Callable[..., tnn.Module]:
    if spatial_dims not in (1, 2):
        raise ValueError("Weight Standardization: StdConv1d/StdConv2d exist for spatial_dims 1 and 2")
    return {1: nl.StdConv1d, 2: nl.StdConv2d}[spatial_dims]


def _spectral_conv(spatial_dims: int) -> Callable[..., tnn.Module]:
    conv = {1: tnn.Conv1d, 2: tnn.Conv2d, 3: tnn.Conv3d}[spatial_dims]
    return lambda *args, **kw: nl.spectral_norm(conv(*args, **kw))


def _group_reference(m: nl.GroupNorm, x: np.ndarray) -> np.ndarray:
    weight, bias = params(m, "weight", "bias")
    return R.group_norm(x, m.num_groups, weight, bias, m.eps)[0]


def _rms_reference(m: nl.RMSNorm, x: np.ndarray) -> np.ndarray:
    eps = m.eps if m.eps is not None else torch.finfo(m.weight.dtype if m.weight is not None else torch.float32).eps
    return R.rms_norm(x, m.normalized_shape, params(m, "weight")[0], eps)[0]


# The float64 references of the records below (each unpacks the module's tensors by name, then calls the reference)


def _batch_reference(m: nl.BatchNorm1d | nl.BatchNorm2d | nl.BatchNorm3d, x: np.ndarray) -> np.ndarray:
    weight, bias = params(m, "weight", "bias")
    return R.batch_norm(x, weight, bias, m.eps)[0]


def _instance_reference(m: nl.InstanceNorm1d | nl.InstanceNorm2d | nl.InstanceNorm3d, x: np.ndarray) -> np.ndarray:
    weight, bias = params(m, "weight", "bias")
    return R.instance_norm(x, weight, bias, m.eps)[0]


def _batch_renorm_reference(m: nl.BatchRenorm1d | nl.BatchRenorm2d | nl.BatchRenorm3d, x: np.ndarray) -> np.ndarray:
    running_mean, running_var, weight, bias = params(m, "running_mean", "running_var", "weight", "bias")
    running_mean, running_var = cast(np.ndarray, running_mean), cast(np.ndarray, running_var)  # always tracked
    return R.batch_variants.batch_renorm(
        x, running_mean, running_var, weight, bias, m.eps, *(float(t) for t in m.limits())
    )[0]


def _ghost_reference(m: nl.GhostBatchNorm1d | nl.GhostBatchNorm2d | nl.GhostBatchNorm3d, x: np.ndarray) -> np.ndarray:
    weight, bias = params(m, "weight", "bias")
    return R.batch_variants.ghost_batch_norm(x, m.virtual_batch_size, weight, bias, m.eps)[0]


def _power_reference(m: nl.PowerNorm, x: np.ndarray) -> np.ndarray:
    running_phi, weight, bias = params(m, "running_phi", "weight", "bias")
    running_phi = cast(np.ndarray, running_phi)  # a buffer PowerNorm always has
    return R.batch_variants.power_norm(x, running_phi, weight, bias, m.eps, m.alpha_fwd)[0]


def _frn_reference(m: nl.FilterResponseNorm, x: np.ndarray) -> np.ndarray:
    weight, bias, tau = params(m, "weight", "bias", "tau")
    weight, bias = cast(np.ndarray, weight), cast(np.ndarray, bias)  # always there (tau: with the TLU)
    return R.response.filter_response_norm(x, weight, bias, tau, m.eps)[0]


def _evonorm_b0_reference(m: nl.EvoNormB0, x: np.ndarray) -> np.ndarray:
    weight, bias, v1 = cast(list[np.ndarray], params(m, "weight", "bias", "v1"))  # EvoNorm always holds all three
    return R.response.evonorm_b0(x, weight, bias, v1, m.eps)


def _evonorm_s0_reference(m: nl.EvoNormS0, x: np.ndarray) -> np.ndarray:
    weight, bias, v1 = cast(list[np.ndarray], params(m, "weight", "bias", "v1"))  # EvoNorm always holds all three
    return R.response.evonorm_s0(x, weight, bias, v1, m.num_groups, m.eps)


def _switchable_reference(m: nl.SwitchableNorm, x: np.ndarray) -> np.ndarray:
    weight, bias, mean_weight, var_weight = params(m, "weight", "bias", "mean_weight", "var_weight")
    mean_weight, var_weight = cast(np.ndarray, mean_weight), cast(np.ndarray, var_weight)  # always there
    return R.response.switchable_norm(x, weight, bias, mean_weight, var_weight, m.eps)


def _grn_reference(m: nl.GlobalResponseNorm, x: np.ndarray) -> np.ndarray:
    weight, bias = cast(list[np.ndarray], params(m, "weight", "bias"))  # GRN always holds both
    return R.response.global_response_norm(x, weight, bias, m.eps)


def _layer2d_reference(m: nl.LayerNorm2d, x: np.ndarray) -> np.ndarray:
    weight, bias = params(m, "weight", "bias")
    return R.layer_norm_2d(x, weight, bias, m.eps)[0]


def _frozen_reference(m: nl.FrozenBatchNorm2d, x: np.ndarray) -> np.ndarray:
    # all four are buffers FrozenBatchNorm2d always has
    running_mean, running_var, weight, bias = cast(
        list[np.ndarray], params(m, "running_mean", "running_var", "weight", "bias")
    )
    return R.batch_norm_inference(x, running_mean, running_var, weight, bias, m.eps)[0]


# Zhu et al. 2025, section 7 ("Initialization of alpha"): alpha0 = 0.5 for non-LLM models; in language models
# alpha0 is set per model, larger in the DyT before attention than in the others, and smaller the wider the model.
# Their smallest LLaMA (7B, width 4096) uses 0.8 before attention and 0.2 elsewhere; those values are the recipe
# for a transformer here (the paper gives none for narrower models).
DYT_RECIPE = Recipe(
    source="Zhu et al. 2025, section 7 and its LLaMA table: alpha0 0.5 (non-LLM); 0.8 before attention, 0.2 "
    "elsewhere in a language model",
    options={"alpha_init_value": 0.5},
    role_options={
        "attention": {"alpha_init_value": 0.8},
        "mlp": {"alpha_init_value": 0.2},
        "final": {"alpha_init_value": 0.2},
    },
)
# Weight Normalization is a reparametrization of a layer's weight, not a norm layer the registry builds: its
# record is its recipe alone (Salimans & Kingma 2016, section 3).
WEIGHT_NORM_RECIPE = Recipe(
    source="Salimans & Kingma 2016, section 3: data-dependent initialization (each layer's pre-activations start "
    "with zero mean and unit variance over a batch)",
    data_init=True,
)

METHODS: tuple[Method, ...] = (
    Method(
        name="batch",
        title="BatchNorm",
        summary="per channel over (N, *spatial)",
        paper="Ioffe & Szegedy 2015",
        modules="`BatchNorm1d/2d/3d`, `SyncBatchNorm`",
        build=ranked({1: nl.BatchNorm1d, 2: nl.BatchNorm2d, 3: nl.BatchNorm3d}),
        formula=STANDARDIZE + "   (mean, var per channel over N and spatial)",
        reference=_batch_reference,
        aliases=("bn",),
        statistics=BATCH,
        train_eval=BN_TRAIN_EVAL,
        pack=pack_channels,
    ),
    Method(
        name="layer",
        title="LayerNorm",
        summary="per example over (C, *spatial), or over C for vectors",
        paper="Ba et al. 2016",
        modules="`LayerNorm` (vectors), `GroupNorm(1, C)` (maps)",
        build=_layer,
        formula=STANDARDIZE + "   (mean, var per example over the normalized dims)",
        reference=_layer_reference,
        aliases=("ln",),
        statistics=LAYER,
        pack=_pack_layer,
        pack_dims=(1, 2, 3),
    ),
    Method(
        name="instance",
        title="InstanceNorm",
        summary="per (example, channel) over spatial positions",
        paper="Ulyanov et al. 2016",
        modules="`InstanceNorm1d/2d/3d`",
        build=ranked({1: nl.InstanceNorm1d, 2: nl.InstanceNorm2d, 3: nl.InstanceNorm3d}),
        formula=STANDARDIZE + "   (mean, var per example and channel over spatial)",
        reference=_instance_reference,
        aliases=("in",),
        statistics=INSTANCE,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
        train_eval="identical in training and eval by default; with track_running_stats=True eval uses running "
        "estimates",
        pack=pack_channels,
        defaults={"affine": True},
    ),
    Method(
        name="group",
        title="GroupNorm",
        summary="per (example, group of channels); num_groups=32 by default",
        paper="Wu & He 2018",
        modules="`GroupNorm`",
        build=_group,
        formula=STANDARDIZE + "   (mean, var per example and group of C/G channels over those channels and spatial)",
        reference=_group_reference,
        aliases=("gn",),
        statistics=GROUP,
        grouped=True,
        pack=pack_groups,
    ),
    Method(
        name="rms",
        title="RMSNorm",
        summary="LayerNorm without centering, over the trailing feature dim",
        paper="Zhang & Sennrich 2019",
        modules="`RMSNorm`",
        build=single(nl.RMSNorm),
        formula="y = x / sqrt(mean(x^2) + eps) * gamma   (no centering, no bias)",
        reference=_rms_reference,
        aliases=("rmsnorm",),
        statistics=LAYER,
        center=False,
        spatial_dims=(0,),
        not_applicable="RMSNorm normalizes the trailing feature dim of (N, *, C) inputs (spatial_dims=0); for "
        "channels-first feature maps use 'layer' or 'group'",
    ),
    Method(
        name="none",
        title="no normalization",
        summary="identity, the baseline",
        paper="-",
        modules="`torch.nn.Identity`",
        build=_none,
        formula="y = x",
        reference=lambda m, x: x,
        aliases=("identity",),
        batch_dependent=False,
        pack=pack_channels,
    ),
    Method(
        name="batchrenorm",
        title="Batch Renormalization",
        summary="BN corrected towards running statistics (r, d clipped)",
        paper="Ioffe 2017",
        modules="`BatchRenorm1d/2d/3d`",
        build=ranked({1: nl.BatchRenorm1d, 2: nl.BatchRenorm2d, 3: nl.BatchRenorm3d}),
        formula="y = gamma * ((x - mu_B)/sigma_B * r + d) + beta,  r = clip(sigma_B/sigma, 1/r_max, r_max), "
        "d = clip((mu_B - mu)/sigma, -d_max, d_max), no gradient through r, d",
        reference=_batch_renorm_reference,
        aliases=("brn", "batch_renorm"),
        statistics=BATCH,
        train_eval=BN_TRAIN_EVAL,
        pack=pack_channels,
        dependence="yes: batch statistics, corrected towards the running ones by r and d",
    ),
    Method(
        name="ghost",
        title="Ghost BatchNorm",
        summary="BN over virtual batches (virtual_batch_size=32)",
        paper="Hoffer et al. 2017",
        modules="`GhostBatchNorm1d/2d/3d`",
        build=ranked({1: nl.GhostBatchNorm1d, 2: nl.GhostBatchNorm2d, 3: nl.GhostBatchNorm3d}),
        formula=STANDARDIZE + "   (BatchNorm over each virtual batch separately)",
        reference=_ghost_reference,
        aliases=("ghostbn",),
        statistics=GHOST,
        train_eval=BN_TRAIN_EVAL,
        pack=pack_channels,
    ),
    Method(
        name="power",
        title="PowerNorm",
        summary="running quadratic mean, no centering, approximate backward",
        paper="Shen et al. 2020",
        modules="`PowerNorm`",
        build=single(nl.PowerNorm),
        formula="y = gamma * x / sqrt(psi + eps) + beta,  psi <- a psi + (1 - a) mean(x^2)  (approximate backward)",
        reference=_power_reference,
        aliases=("powernorm", "pn"),
        statistics=BATCH,
        center=False,
        pack=pack_channels,
        dependence="yes, through the running quadratic mean updated by every batch",
        train_eval="training divides by the running quadratic mean of earlier batches (then updates it); eval by "
        "the final one",
    ),
    Method(
        name="meanonly",
        title="Mean-only BatchNorm",
        summary="BN's centering without the division (with Weight Normalization)",
        paper="Salimans & Kingma 2016",
        modules="`MeanOnlyBatchNorm`",
        build=single(nl.MeanOnlyBatchNorm),
        formula="y = x - mean + beta   (mean per channel over N and spatial; no division)",
        reference=lambda m, x: R.batch_variants.mean_only_batch_norm(x, params(m, "bias")[0]),
        aliases=("mean_only", "mobn"),
        statistics=BATCH,
        pack=pack_channels,
        train_eval="training subtracts the batch mean and updates a running mean; eval subtracts the running mean",
        recipe=Recipe(
            source="Salimans & Kingma 2016, section 2.2: mean-only BN together with Weight Normalization",
            weight_norm=True,
            data_init=True,
        ),
    ),
    Method(
        name="frn",
        title="Filter Response Normalization",
        summary="FRN + TLU: per (example, channel) mean square",
        paper="Singh & Krishnan 2019",
        modules="`FilterResponseNorm`, `TLU`",
        build=single(nl.FilterResponseNorm),
        formula="y = max(gamma * x / sqrt(mean(x^2) + |eps|) + beta, tau)   (TLU)",
        reference=_frn_reference,
        statistics=INSTANCE,
        center=False,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
        fused_activation=True,
        pack=pack_channels,
    ),
    Method(
        name="evonorm_b0",
        title="EvoNorm-B0",
        summary="batch variance vs instance term",
        paper="Liu et al. 2020",
        modules="`EvoNormB0`",
        build=single(nl.EvoNormB0),
        formula="y = gamma * x / max(sqrt(var_batch + eps), v1 * x + sqrt(var_instance + eps)) + beta",
        reference=_evonorm_b0_reference,
        aliases=("evonorm-b0", "b0"),
        statistics=BATCH,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
        dependence="yes: the batch variance enters the denominator",
        fused_activation=True,
        pack=pack_channels,
        train_eval="training uses the batch variance and updates running_var; eval uses running_var",
    ),
    Method(
        name="evonorm_s0",
        title="EvoNorm-S0",
        summary="group variance with a swish-like numerator",
        paper="Liu et al. 2020",
        modules="`EvoNormS0`",
        build=single(nl.EvoNormS0),
        formula="y = gamma * x * sigmoid(v1 * x) / sqrt(var_group + eps) + beta",
        reference=_evonorm_s0_reference,
        aliases=("evonorm-s0", "s0"),
        statistics=GROUP,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
        grouped=True,
        fused_activation=True,
        pack=pack_groups,
    ),
    Method(
        name="switchable",
        title="Switchable Normalization",
        summary="learned mixture of IN, LN and BN statistics",
        paper="Luo et al. 2018",
        modules="`SwitchableNorm`",
        build=single(nl.SwitchableNorm),
        formula="mean = sum_k w_k mean_k, var = sum_k w'_k var_k over k in {IN, LN, BN} (softmax weights); shaded: the "
        "BN sets",
        reference=_switchable_reference,
        aliases=("sn",),
        statistics=BATCH,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
        dependence="yes, through its BatchNorm part (learned weight)",
        train_eval="training uses batch statistics for the BN part; eval uses running estimates for it",
    ),
    Method(
        name="grn",
        title="Global Response Normalization",
        summary="each channel's L2 norm over space, relative to the channels' mean, rescales it (ConvNeXt V2)",
        paper="Woo et al. 2023",
        modules="`GlobalResponseNorm`",
        build=single(nl.GlobalResponseNorm),
        formula="y = gamma * x * G / (mean_c G + eps) + beta + x,  G = ||x||_2 over spatial per (example, channel)",
        reference=_grn_reference,
        statistics=INSTANCE,
        center=False,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
        pack=None,
    ),
    Method(
        name="layer2d",
        title="LayerNorm2d",
        summary="per (example, position) over the channels (ConvNeXt)",
        paper="Liu et al. 2022",
        modules="`LayerNorm2d`",
        build=single(nl.LayerNorm2d),
        formula=STANDARDIZE + "   (mean, var per example and position over C)",
        reference=_layer2d_reference,
        aliases=("layernorm2d", "ln2d"),
        statistics=POSITION,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
    ),
    Method(
        name="rms2d",
        title="RMSNorm2d",
        summary="per (example, position) over the channels, no centering",
        paper="Zhang & Sennrich 2019",
        modules="`RMSNorm2d`",
        build=single(nl.RMSNorm2d),
        formula="y = x / sqrt(mean_c(x^2) + eps) * gamma   (per example and position)",
        reference=lambda m, x: R.rms_norm_2d(x, params(m, "weight")[0], m.eps)[0],
        aliases=("rmsnorm2d",),
        statistics=POSITION,
        center=False,
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
    ),
    Method(
        name="dyt",
        title="DyT (Dynamic Tanh)",
        summary="gamma * tanh(alpha * x) + beta, no statistics",
        paper="Zhu et al. 2025",
        modules="`DynamicTanh`",
        build=_dyt,
        formula="y = gamma * tanh(alpha * x) + beta",
        reference=_dyt_reference,
        aliases=("dynamic_tanh",),
        batch_dependent=False,
        dependence="no: elementwise",
        recipe=DYT_RECIPE,
    ),
    Method(
        name="lrn",
        title="Local Response Normalization",
        summary="across a window of 5 channels",
        paper="Krizhevsky et al. 2012",
        modules="`LocalResponseNorm`",
        build=_lrn,
        formula="b_c = a_c / (k + alpha/n * sum over n neighbouring channels of a^2)^beta  (overlapping windows)",
        reference=lambda m, x: R.response.local_response_norm(x, m.size, m.alpha, m.beta, m.k),
        batch_dependent=False,
        dependence="no: a window of neighbouring channels of one position",
        spatial_dims=(1, 2, 3),
        not_applicable=_ON_MAPS,
    ),
    Method(
        name="frozen",
        title="FrozenBatchNorm2d",
        summary="fixed statistics and affine (fine-tuning)",
        paper="torchvision",
        modules="`FrozenBatchNorm2d`",
        build=single(nl.FrozenBatchNorm2d),
        formula="y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, all buffers",
        reference=_frozen_reference,
        aliases=("frozenbn",),
        batch_dependent=False,
        dependence="no: fixed statistics",
        spatial_dims=(2,),
        not_applicable="FrozenBatchNorm2d takes (N, C, H, W) feature maps (spatial_dims=2)",
    ),
    Method(
        name="ws",
        title="Weight Standardization + GroupNorm",
        summary="standardized conv filters followed by GroupNorm",
        paper="Qiao et al. 2019",
        modules="`StdConv1d/2d` + `GroupNorm`",
        build=_group,
        formula="each conv filter w_o -> (w_o - mean(w_o)) / std(w_o); shaded: the GroupNorm sets after it",
        reference=_group_reference,
        statistics=GROUP,
        grouped=True,
        conv=_std_conv,
        pack=pack_groups,
        spatial_dims=(1, 2),
        not_applicable="Weight Standardization standardizes conv filters: StdConv1d/StdConv2d exist for spatial_dims "
        "1 and 2",
    ),
    Method(
        name="spectral",
        title="Spectral Normalization",
        summary="convs divided by their largest singular value, no activation norm",
        paper="Miyato et al. 2018",
        modules="`spectral_norm(conv)`",
        build=_none,
        formula="W -> W / sigma_max(W) (power iteration)",
        reference=lambda m, x: x,
        batch_dependent=False,
        dependence="no: it normalizes weights",
        conv=_spectral_conv,
        spatial_dims=(1, 2, 3),
        not_applicable="Spectral Normalization here wraps the convs of a feature-map model",
    ),
)

_BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
_BY_ALIAS: dict[str, str] = {alias: m.name for m in METHODS for alias in (m.name, *m.aliases)}


def available_norms() -> list[str]:
    """Names :func:`create_norm` accepts, sorted."""
    return sorted(_BY_NAME)


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or one of its aliases (``"bn"``, ``"gn"``, ...); ValueError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"norm name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _BY_ALIAS:
        raise ValueError(f"unknown norm {name!r}; available: {', '.join(available_norms())}")
    return _BY_ALIAS[key]


def get_method(name: str) -> Method:
    """The :class:`Method` record for ``name`` or an alias."""
    return _BY_NAME[canonical_name(name)]


def is_batch_dependent(name: str) -> bool:
    """Whether the registered norm ``name`` mixes examples of a batch in training."""
    return get_method(name).is_batch_dependent


def conv_layer(name: str, spatial_dims: int) -> Callable[..., tnn.Module] | None:
    """For weight-level methods (``ws``, ``spectral``): the conv class (or factory) a model should use; else None."""
    method = get_method(name)
    return None if method.conv is None else method.conv(spatial_dims)


def can_pack(name: str, spatial_dims: int) -> bool:
    """Whether K models' ``name`` norms run exactly as one module over their channels side by side."""
    return get_method(name).can_pack(spatial_dims)


def _check_spatial_dims(fn: str, method: Method, spatial_dims: int) -> None:
    if spatial_dims not in (0, 1, 2, 3):
        raise ValueError(f"{fn}: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims!r}")
    if not method.applies_to(spatial_dims):
        raise ValueError(f"{fn}({method.name!r}, spatial_dims={spatial_dims}): {method.not_applicable}")


def create_packed_norm(
    name: str, num_features: int, copies: int, *, spatial_dims: int = 2, **kwargs: Any
) -> tnn.Module:
    """``copies`` independent ``name`` norms of ``num_features`` channels each, as one module over
    ``copies * num_features`` channels (model k owns channels ``k*C .. (k+1)*C - 1``). Each model's statistics and
    parameters stay its own: the packed module computes exactly what the ``copies`` modules compute alone.
    ValueError for methods that do not pack (see :func:`can_pack`)."""
    method = get_method(name)
    _check_spatial_dims("create_packed_norm", method, spatial_dims)
    if method.pack is None or not method.can_pack(spatial_dims):  # can_pack is False without pack
        raise ValueError(f"create_packed_norm: {name!r} does not pack over channels (spatial_dims={spatial_dims})")
    return method.pack(method, num_features, spatial_dims, copies, **{**method.defaults, **kwargs})


def create_norm(
    name: str, num_features: int, *, spatial_dims: int = 2, act: str | tnn.Module | type | None = None, **kwargs: Any
) -> tnn.Module:
    """Build the normalization ``name`` for ``num_features`` channels.

    Args:
        name: a name from :func:`available_norms` (or an alias such as ``"bn"``, ``"gn"``).
        num_features: C, the channel / feature count.
        spatial_dims: spatial dims after (N, C): 0 for vectors and token sequences, 1-3 for feature maps.
            Default: 2.
        act: an activation after the norm (timm's norm+act): a name (``"relu"``, ``"gelu"``, ``"silu"``...),
            a module or a module class. The result is a :mod:`normlab.nn.norm_act` class (``BatchNormAct2d``...),
            a subclass of the norm with the norm's state_dict keys.
        **kwargs: passed to the module (``eps``, ``momentum``, ``num_groups``, ``affine``, ...).

    Example::

        >>> import normlab
        >>> normlab.create_norm("gn", 64, num_groups=8)
        GroupNorm(8, 64, eps=1e-05, affine=True, bias=True)
    """
    method = get_method(name)
    _check_spatial_dims("create_norm", method, spatial_dims)
    norm = method.build(num_features, spatial_dims, **{**method.defaults, **kwargs})
    return norm if act is None else with_activation(norm, act)


def methods_table() -> str:
    """The README's methods table, in Markdown, from the records (``normlab norms --markdown`` prints it)."""
    rows = [
        "| name | module | what it does (input `(N, C, *S)`) | batch-dep. | applies to | paper |",
        "|---|---|---|---|---|---|",
    ]
    dims = {0: "vectors", 1: "1d", 2: "2d", 3: "3d"}
    for m in METHODS:
        name = f"`{m.name}`" + (f" ({', '.join(f'`{a}`' for a in m.aliases)})" if m.aliases else "")
        applies = ", ".join(dims[d] for d in m.spatial_dims)
        extra = " (activation built in)" if m.fused_activation else ""
        rows.append(
            f"| {name} | {m.modules} | {m.summary}{extra} | {'yes' if m.is_batch_dependent else 'no'} | "
            f"{applies} | {m.paper} |"
        )
    return "\n".join(rows) + "\n"
