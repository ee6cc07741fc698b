"""Every normalization class of :mod:`normlab.nn`, listed once: :data:`NORM_CLASSES`.

The other lists are derived from this one: the norm+act classes (:mod:`normlab.nn.norm_act`, one per entry),
``normlab.nn``'s exports, and :func:`normlab.transform.is_norm` (so :func:`normlab.param_groups` keeps the
classes' parameters out of weight decay and :func:`normlab.keep_norms_fp32` keeps them in float32). A new norm
class is one entry here, plus its registry record if ``create_norm`` builds it; ``tests/test_catalog.py`` fails for
a class the registry builds that is missing here.

Examples::

    >>> import normlab.nn as nl
    >>> from normlab.nn.norm_classes import NORM_CLASSES
    >>> nl.BatchNorm2d in NORM_CLASSES and nl.BatchNormAct2d.norm_class is nl.BatchNorm2d
    True
"""

from __future__ import annotations

from torch.nn import Module

from . import batch_variants, batchnorm, channels, dyt, frozen, grn, instancenorm, normalization, response, switchable

NORM_CLASSES: tuple[type[Module], ...] = (
    batchnorm.BatchNorm1d,
    batchnorm.BatchNorm2d,
    batchnorm.BatchNorm3d,
    batchnorm.SyncBatchNorm,
    instancenorm.InstanceNorm1d,
    instancenorm.InstanceNorm2d,
    instancenorm.InstanceNorm3d,
    normalization.LayerNorm,
    normalization.GroupNorm,
    normalization.RMSNorm,
    normalization.LocalResponseNorm,
    batch_variants.BatchRenorm1d,
    batch_variants.BatchRenorm2d,
    batch_variants.BatchRenorm3d,
    batch_variants.GhostBatchNorm1d,
    batch_variants.GhostBatchNorm2d,
    batch_variants.GhostBatchNorm3d,
    batch_variants.PowerNorm,
    batch_variants.MeanOnlyBatchNorm,
    frozen.FrozenBatchNorm2d,
    response.FilterResponseNorm,
    response.EvoNormB0,
    response.EvoNormS0,
    switchable.SwitchableNorm,
    dyt.DynamicTanh,
    grn.GlobalResponseNorm,
    channels.LayerNorm2d,
    channels.RMSNorm2d,
)
"""The normalization classes: each has a norm+act class, is a norm to ``is_norm``, and is exported by name."""

NORM_PARTS: tuple[type[Module], ...] = (response.TLU,)
"""A norm's piece exported on its own (FRN's activation, the TLU): a norm to ``is_norm`` (its threshold is a
norm parameter, exempt from weight decay), exported by name, with no norm+act class (it is an activation)."""

__all__ = ["NORM_CLASSES", "NORM_PARTS", *(cls.__name__ for cls in NORM_CLASSES + NORM_PARTS)]
globals().update({cls.__name__: cls for cls in NORM_CLASSES + NORM_PARTS})  # `from .norm_classes import *`
