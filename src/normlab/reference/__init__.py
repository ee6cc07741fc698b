"""Float64 NumPy definitions of every method, forward and analytic backward: the oracle the tests compare with.

Read these files to learn the formulas; nothing here is meant to be fast.

- :mod:`~normlab.reference.layout`: which values each statistic is taken over (the Group Norm paper's S_i).
- :mod:`~normlab.reference.standardization`: BatchNorm, LayerNorm, InstanceNorm, GroupNorm, RMSNorm.
- :mod:`~normlab.reference.reparametrization`: Weight, Cosine and Spectral Normalization, Weight Standardization.
- :mod:`~normlab.reference.batch_variants`: Batch Renormalization, Ghost BatchNorm, PowerNorm.
- :mod:`~normlab.reference.response`: FRN + TLU, EvoNorm-B0/S0, Switchable Normalization, DyT, LRN.
"""

from . import batch_variants, response
from .layout import Layout, batch_layout, channel_layout, group_layout, instance_layout, layer_layout
from .reparametrization import (
    cosine_linear,
    cosine_linear_backward,
    norm_except_dim,
    spectral_norm,
    weight_norm,
    weight_norm_backward,
    weight_standardization,
    weight_standardization_backward,
)
from .standardization import (
    Saved,
    backward,
    batch_norm,
    batch_norm_inference,
    group_norm,
    instance_norm,
    instance_running_stats_update,
    layer_norm,
    layer_norm_2d,
    rms_norm,
    rms_norm_2d,
    running_stats_update,
    standardize,
    standardize_backward,
)

__all__ = [
    "Layout",
    "Saved",
    "backward",
    "batch_layout",
    "batch_norm",
    "batch_norm_inference",
    "cosine_linear",
    "cosine_linear_backward",
    "group_layout",
    "group_norm",
    "instance_layout",
    "instance_norm",
    "instance_running_stats_update",
    "layer_layout",
    "layer_norm",
    "layer_norm_2d",
    "rms_norm_2d",
    "channel_layout",
    "norm_except_dim",
    "rms_norm",
    "running_stats_update",
    "standardize",
    "standardize_backward",
    "weight_norm",
    "weight_norm_backward",
    "weight_standardization",
    "weight_standardization_backward",
    "spectral_norm",
    "batch_variants",
    "response",
]
