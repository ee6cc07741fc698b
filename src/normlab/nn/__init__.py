"""Drop-in twins of ``torch.nn``'s normalization modules, laid out as torch.nn's own files, and the rest of the
catalog (Batch Renorm, Ghost BN, PowerNorm, mean-only BN, FRN, EvoNorm, Switchable, DyT, GRN, Weight Standardization, Spectral,
FrozenBatchNorm2d), and norm + activation classes (``BatchNormAct2d``, ...)."""

from .batch_variants import (
    BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d, MeanOnlyBatchNorm, PowerNorm,
)  # fmt: skip
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from .cosine import CosineConv1d, CosineConv2d, CosineLinear
from .dyt import DynamicTanh
from .channels import LayerNorm2d, RMSNorm2d
from .frozen import FrozenBatchNorm2d
from .grn import GlobalResponseNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from . import norm_act
from .norm_act import *  # noqa: F401,F403  (BatchNormAct2d, GroupNormAct, ...: one per norm class)
from .normalization import GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm
from .response import TLU, EvoNormB0, EvoNormS0, FilterResponseNorm
from .spectral_norm import SpectralNorm, spectral_norm
from .switchable import SwitchableNorm
from .weight_norm import WeightNorm, data_dependent_init, weight_norm
from .weight_standardization import StdConv1d, StdConv2d

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "CosineConv1d",
    "CosineConv2d", "CosineLinear", "DynamicTanh", "EvoNormB0", "EvoNormS0", "FilterResponseNorm",
    "FrozenBatchNorm2d", "GhostBatchNorm1d", "GlobalResponseNorm", "GhostBatchNorm2d", "GhostBatchNorm3d", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "LayerNorm2d", "LocalResponseNorm", "MeanOnlyBatchNorm", "PowerNorm", "RMSNorm", "RMSNorm2d", "SpectralNorm",
    "StdConv1d", "StdConv2d", "SwitchableNorm", "SyncBatchNorm", "TLU", "WeightNorm", "spectral_norm",
    "weight_norm", "data_dependent_init",
]  # fmt: skip
__all__ += [name for name in norm_act.__all__ if name.endswith(('Act', 'Act1d', 'Act2d', 'Act3d'))]
