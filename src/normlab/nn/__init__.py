"""Drop-in twins of ``torch.nn``'s normalization modules, laid out as torch.nn's own files, and the rest of the
catalog (Batch Renorm, Ghost BN, PowerNorm, mean-only BN, FRN, EvoNorm, Switchable, DyT, GRN, Weight Standardization, Spectral,
FrozenBatchNorm2d), and norm + activation classes (``BatchNormAct2d``, ...).

The normalization classes are exported from :data:`normlab.nn.norm_classes.NORM_CLASSES`, their norm+act classes
from :mod:`normlab.nn.norm_act`; the layers below normalize weights or pre-activations instead."""

from . import norm_act, norm_classes
from .cosine import CosineConv1d, CosineConv2d, CosineLinear
from .norm_act import *  # noqa: F401,F403  (BatchNormAct2d, GroupNormAct, ...: one per norm class)
from .norm_classes import *  # noqa: F401,F403  (BatchNorm2d, GroupNorm, ..., TLU: NORM_CLASSES and NORM_PARTS)
from .spectral_norm import SpectralNorm, spectral_norm
from .weight_norm import WeightNorm, data_dependent_init, weight_norm
from .weight_standardization import StdConv1d, StdConv2d

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
