"""Drop-in twins of ``torch.nn``'s normalization modules, laid out as torch.nn's own files, and the rest of the
catalog (Batch Renorm, Ghost BN, PowerNorm, mean-only BN, FRN, EvoNorm, Switchable, DyT, GRN, Weight Standardization,
Spectral, FrozenBatchNorm2d), and norm + activation classes (``BatchNormAct2d``, ...).

The normalization classes are exported from :data:`normlab.nn.norm_classes.NORM_CLASSES`, their norm+act classes
from :mod:`normlab.nn.norm_act`; the layers below normalize weights or pre-activations instead."""

from typing import TYPE_CHECKING

from . import norm_act, norm_classes
from .cosine import CosineConv1d, CosineConv2d, CosineLinear
from .norm_act import *  # noqa: F401,F403  (BatchNormAct2d, GroupNormAct, ...: one per norm class)
from .norm_classes import *  # noqa: F401,F403  (BatchNorm2d, GroupNorm, ..., TLU: NORM_CLASSES and NORM_PARTS)
from .spectral_norm import SpectralNorm, spectral_norm
from .weight_norm import WeightNorm, data_dependent_init, weight_norm
from .weight_standardization import StdConv1d, StdConv2d

if TYPE_CHECKING:  # the classes `from .norm_classes import *` brings in (a list built at run time), named for mypy
    from .batch_variants import BatchRenorm1d as BatchRenorm1d
    from .batch_variants import BatchRenorm2d as BatchRenorm2d
    from .batch_variants import BatchRenorm3d as BatchRenorm3d
    from .batch_variants import GhostBatchNorm1d as GhostBatchNorm1d
    from .batch_variants import GhostBatchNorm2d as GhostBatchNorm2d
    from .batch_variants import GhostBatchNorm3d as GhostBatchNorm3d
    from .batch_variants import MeanOnlyBatchNorm as MeanOnlyBatchNorm
    from .batch_variants import PowerNorm as PowerNorm
    from .batchnorm import BatchNorm1d as BatchNorm1d
    from .batchnorm import BatchNorm2d as BatchNorm2d
    from .batchnorm import BatchNorm3d as BatchNorm3d
    from .batchnorm import SyncBatchNorm as SyncBatchNorm
    from .channels import LayerNorm2d as LayerNorm2d
    from .channels import RMSNorm2d as RMSNorm2d
    from .dyt import DynamicTanh as DynamicTanh
    from .frozen import FrozenBatchNorm2d as FrozenBatchNorm2d
    from .grn import GlobalResponseNorm as GlobalResponseNorm
    from .instancenorm import InstanceNorm1d as InstanceNorm1d
    from .instancenorm import InstanceNorm2d as InstanceNorm2d
    from .instancenorm import InstanceNorm3d as InstanceNorm3d
    from .normalization import GroupNorm as GroupNorm
    from .normalization import LayerNorm as LayerNorm
    from .normalization import LocalResponseNorm as LocalResponseNorm
    from .normalization import RMSNorm as RMSNorm
    from .response import TLU as TLU
    from .response import EvoNormB0 as EvoNormB0
    from .response import EvoNormS0 as EvoNormS0
    from .response import FilterResponseNorm as FilterResponseNorm
    from .switchable import SwitchableNorm as SwitchableNorm

__all__ = sorted(cls.__name__ for cls in norm_classes.NORM_CLASSES + norm_classes.NORM_PARTS) + [
    "CosineConv1d",
    "CosineConv2d",
    "CosineLinear",
    "SpectralNorm",
    "StdConv1d",
    "StdConv2d",
    "WeightNorm",
    "spectral_norm",
    "weight_norm",
    "data_dependent_init",
]
__all__ += [name for name in norm_act.__all__ if name.endswith(("Act", "Act1d", "Act2d", "Act3d"))]
