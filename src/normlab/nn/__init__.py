"""Drop-in twins of ``torch.nn``'s normalization modules, laid out as torch.nn's own files."""

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from .cosine import CosineConv1d, CosineConv2d, CosineLinear
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .normalization import GroupNorm, LayerNorm, RMSNorm
from .weight_norm import WeightNorm, weight_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CosineConv1d",
    "CosineConv2d",
    "CosineLinear",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "RMSNorm",
    "SyncBatchNorm",
    "WeightNorm",
    "weight_norm",
]
