r"""LayerNorm2d and RMSNorm2d: LayerNorm / RMSNorm over the channels of a feature map ``(N, C, *S)``, at each
position (ConvNeXt's LayerNorm, what pytorch issue 71465 asks for). Formulas and backward in
:func:`normlab.reference.layer_norm_2d` / :func:`~normlab.reference.rms_norm_2d`.

Both move the channel dim last and call ATen's ``layer_norm`` / ``rms_norm``: on channels_last input that view is
already contiguous, so nothing is copied and the output is channels_last; on contiguous input ATen makes the one
copy it needs.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import _checks
from .. import functional as NF
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm2d", "RMSNorm2d"]


def _check_maps(name: str, input: Tensor, channels: int) -> None:
    _checks.check_floating(name, input)
    _checks.check_min_dim(name, input, 3, "(N, C, *spatial)")
    _checks.check_channels(name, input, channels)


class LayerNorm2d(LayerNorm):
    r"""LayerNorm over the C channels of ``(N, C, *S)`` at each position (ConvNeXt; timm's ``LayerNorm2d``).

    .. math:: y_{n,:,s} = \frac{x_{n,:,s} - \mathrm{E}_c[x_{n,c,s}]}{\sqrt{\mathrm{Var}_c[x_{n,c,s}] + \epsilon}}
              \,\gamma + \beta

    One statistic per (example, position): independent of the batch and of the other positions. A
    ``torch.nn.LayerNorm`` over ``num_channels`` (same parameters and state_dict keys as timm's), applied to dim 1.

    Args:
        num_channels: C.
        eps: added to the variance, > 0. Default: 1e-6 (ConvNeXt's).
        affine: learnable per-channel ``weight`` and ``bias``. Default: True.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same, in the input's memory format.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> ln2d = nl.LayerNorm2d(8)
        >>> x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
        >>> y = ln2d(x)
        >>> y.is_contiguous(memory_format=torch.channels_last), bool(y.mean(1).abs().max() < 1e-5)
        (True, True)
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-6, affine: bool = True, device: Any = None, dtype: Any = None
    ) -> None:
        _checks.check_num_features("LayerNorm2d", num_channels, "num_channels")
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        _check_maps("LayerNorm2d", input, self.normalized_shape[0])
        out = NF.layer_norm(input.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.movedim(-1, 1)


class RMSNorm2d(RMSNorm):
    r"""RMSNorm over the C channels of ``(N, C, *S)`` at each position.

    .. math:: y_{n,:,s} = \frac{x_{n,:,s}}{\sqrt{\frac{1}{C}\sum_c x_{n,c,s}^2 + \epsilon}}\,\gamma

    One statistic per (example, position), no centering, no bias. A ``torch.nn.RMSNorm`` over ``num_channels``
    applied to dim 1.

    Args:
        num_channels: C.
        eps: added to the mean square, > 0. Default: 1e-6.
        affine: learnable per-channel ``weight``. Default: True.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same, in the input's memory format.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> nl.RMSNorm2d(8)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-6, affine: bool = True, device: Any = None, dtype: Any = None
    ) -> None:
        _checks.check_num_features("RMSNorm2d", num_channels, "num_channels")
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        _check_maps("RMSNorm2d", input, self.normalized_shape[0])
        return NF.rms_norm(input.movedim(1, -1), self.normalized_shape, self.weight, self.eps).movedim(-1, 1)
