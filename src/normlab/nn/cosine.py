r"""Cosine Normalization (Luo et al. 2017): layers whose pre-activation is a cosine, bounded in [-1, 1].

.. math:: y = \cos\theta = \frac{w\cdot x}{\lVert w\rVert\,\lVert x\rVert}

``centered=True`` centers w and x first (Pearson correlation). There is no bias: it would undo the bound.
An optional learnable output ``scale`` (a scalar, e.g. 10 for a cosine classifier) multiplies the cosine.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter, init
from torch.nn.modules.utils import _pair, _single

from .. import _checks
from .. import functional as NF
from ._twin import Twin

__all__ = ["CosineLinear", "CosineConv1d", "CosineConv2d"]


class _ScaledCosine(Twin):
    """Holds the optional learnable scale shared by the cosine layers."""

    def _init_scale(self, scale: float | None, factory_kwargs: dict) -> None:
        if scale is None:
            self.register_parameter("scale", None)
        else:
            self.scale = Parameter(torch.full((), float(scale), **factory_kwargs))

    def _scaled(self, cos: Tensor) -> Tensor:
        return cos if self.scale is None else cos * self.scale


class CosineLinear(_ScaledCosine):
    r"""Linear layer with Cosine Normalization: :math:`y_o = s\cdot\frac{w_o\cdot x}{\lVert w_o\rVert\,\lVert x\rVert}`.

    Args:
        in_features: size of each input vector.
        out_features: number of output units.
        centered: center x and each w_o first (Pearson correlation). Default: False.
        scale: if given, a learnable scalar output scale initialized to it; None (default) for a plain cosine.
        eps: lower clamp on each norm, so a zero vector gives 0 instead of NaN. Default: 1e-8.

    Shape:
        - Input: ``(*, in_features)``; output: ``(*, out_features)``, each in [-1, 1] (times ``scale``).

    Examples::

        >>> import torch, normlab.nn as nl
        >>> cos = nl.CosineLinear(16, 4)
        >>> bool(cos(torch.randn(3, 16)).abs().max() <= 1)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        centered: bool = False,
        *,
        scale: float | None = None,
        eps: float = 1e-8,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        _checks.check_num_features("CosineLinear", in_features, "in_features")
        _checks.check_num_features("CosineLinear", out_features, "out_features")
        _checks.check_eps("CosineLinear", eps)
        self.in_features, self.out_features = in_features, out_features
        self.centered, self.eps = centered, eps
        self.weight = Parameter(torch.empty(out_features, in_features, **factory_kwargs))
        self._init_scale(scale, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, input: Tensor) -> Tensor:
        return self._scaled(NF.cosine_linear(input, self.weight, self.centered, self.eps))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, centered={self.centered}, "
            f"scale={self.scale is not None}"
        )


class _CosineConvNd(_ScaledCosine):
    _expand: Any

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        centered: bool = False,
        *,
        scale: float | None = None,
        eps: float = 1e-8,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        name = type(self).__name__
        _checks.check_num_features(name, in_channels, "in_channels")
        _checks.check_num_features(name, out_channels, "out_channels")
        _checks.check_eps(name, eps)
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: groups ({groups}) must be a positive divisor of in_channels ({in_channels}) and "
                f"out_channels ({out_channels})"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = self._expand(kernel_size)
        self.stride, self.padding, self.dilation = self._expand(stride), self._expand(padding), self._expand(dilation)
        self.groups, self.centered, self.eps = groups, centered, eps
        self.weight = Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory_kwargs))
        self._init_scale(scale, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, input: Tensor) -> Tensor:
        cos = NF.cosine_conv(
            input, self.weight, self.stride, self.padding, self.dilation, self.groups, self.centered, self.eps
        )
        return self._scaled(cos)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, centered={self.centered}, "
            f"scale={self.scale is not None}"
        )


class CosineConv1d(_CosineConvNd):
    r"""1-d convolution with Cosine Normalization: the cosine between each filter and each input patch,
    :math:`y_{o,p} = s\cdot\frac{w_o\cdot x_p}{\lVert w_o\rVert\,\lVert x_p\rVert}` for filter o and patch p.

    Arguments as ``torch.nn.Conv1d`` (zero padding, no bias) plus ``centered``, ``scale`` and ``eps`` as in
    :class:`CosineLinear`.

    Shape:
        - Input: ``(N, C_in, L)``; output: ``(N, C_out, L_out)``.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> nl.CosineConv1d(3, 8, 3)(torch.randn(2, 3, 10)).shape
        torch.Size([2, 8, 8])
    """

    _expand = staticmethod(_single)


class CosineConv2d(_CosineConvNd):
    r"""2-d convolution with Cosine Normalization: the cosine between each filter and each input patch,
    :math:`y_{o,p} = s\cdot\frac{w_o\cdot x_p}{\lVert w_o\rVert\,\lVert x_p\rVert}` for filter o and patch p.

    Arguments as ``torch.nn.Conv2d`` (zero padding, no bias) plus ``centered``, ``scale`` and ``eps`` as in
    :class:`CosineLinear`.

    Shape:
        - Input: ``(N, C_in, H, W)``; output: ``(N, C_out, H_out, W_out)``.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> nl.CosineConv2d(3, 8, 3, padding=1)(torch.randn(2, 3, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
    """

    _expand = staticmethod(_pair)
