r"""LayerNorm, GroupNorm, RMSNorm: drop-in twins of the modules in ``torch/nn/modules/normalization.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import _checks
from .. import functional as NF
from ._twin import Twin

__all__ = ["LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm"]


class LayerNorm(Twin, torch.nn.LayerNorm):
    r"""Layer Normalization (Ba et al. 2016) over the trailing ``normalized_shape`` dims.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}\,\gamma + \beta

    Statistics per row over S_i = the last ``len(normalized_shape)`` dims (biased variance): independent of the
    batch, the same in training and eval.

    Args:
        normalized_shape: the trailing shape to normalize over (an int for the last dim).
        eps: added to the variance, > 0. Default: 1e-5.
        elementwise_affine: learnable ``weight`` (init 1) and ``bias`` (init 0) of shape ``normalized_shape``.
        bias: with ``elementwise_affine``, also learn ``bias``. Default: True.
        upcast: compute in float32 and cast the output to the input dtype (keyword only), as OLMo's LayerNorm
            does; ATen already keeps float32 statistics for fp16/bf16, so this changes only the output's
            rounding path. Default: False.

    Shape:
        - Input: ``(*, *normalized_shape)``; output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> ln = nl.LayerNorm(16)
        >>> y = ln(torch.randn(2, 10, 16) * 3 + 1)
        >>> bool(y.mean(-1).abs().max() < 1e-5), bool((y.std(-1, correction=0) - 1).abs().max() < 1e-3)
        (True, True)
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]
    normalized_shape: tuple[int, ...]
    eps: float
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: int | Sequence[int] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        upcast: bool = False,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()  # Twin's: the state is built here, with checks, not by torch's __init__
        self.normalized_shape = _checks.as_shape(type(self).__name__, normalized_shape)
        _checks.check_eps(type(self).__name__, eps)
        self.eps, self.upcast = eps, upcast
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if self.upcast and input.dtype != torch.float32:
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            out = NF.layer_norm(input.float(), self.normalized_shape, weight, bias, self.eps)
            return out.to(input.dtype)
        signature = (input.shape, input.dtype, type(input), self.eps)
        if signature != self._checked:
            _checks.check_floating("layer_norm", input)
            _checks.check_eps("layer_norm", self.eps)
            _checks.check_trailing("layer_norm", input, self.normalized_shape, weight=self.weight, bias=self.bias)
            self._checks_passed(signature)
        return NF._layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        text = "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None
        )
        return text + (", upcast=True" if self.upcast else "")


class GroupNorm(Twin, torch.nn.GroupNorm):
    r"""Group Normalization (Wu & He 2018): channels split into ``num_groups`` groups, each normalized per example.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}\,\gamma + \beta

    Statistics per (example, group) over S_i = the C/G channels of the group and every spatial position:
    independent of the batch. ``num_groups=1`` is the Group Norm paper's LayerNorm (per-channel affine),
    ``num_groups=C`` its InstanceNorm.

    Args:
        num_groups: G, a divisor of ``num_channels``.
        num_channels: C.
        eps: added to the variance, > 0. Default: 1e-5.
        affine: learnable per-channel ``weight`` and ``bias``. Default: True.
        bias: with ``affine``, also learn ``bias``. Default: True.

    Shape:
        - Input: ``(N, C, *)``; output: same shape (channels_last stays channels_last).

    Examples::

        >>> import torch, normlab.nn as nl
        >>> gn = nl.GroupNorm(4, 8)
        >>> gn(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine"]
    num_groups: int
    num_channels: int
    eps: float
    affine: bool

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()  # Twin's: the state is built here, with checks, not by torch's __init__
        name = type(self).__name__
        _checks.check_num_features(name, num_channels, "num_channels")
        _checks.check_groups(name, num_groups, num_channels)
        _checks.check_eps(name, eps)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if self.affine:
            self.weight = Parameter(torch.empty(num_channels, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_channels, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        signature = (input.shape, input.dtype, type(input), self.eps)
        if signature != self._checked:
            _checks.check_min_dim(type(self).__name__, input, 2, "(N, C, *)")
            _checks.check_channels("GroupNorm", input, self.num_channels, "num_channels")
            NF.check_group_norm_args("group_norm", input, self.num_groups, self.weight, self.bias, self.eps)
            self._checks_passed(signature)
        return NF._group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return "{num_groups}, {num_channels}, eps={eps}, affine={affine}, bias={use_bias}".format(
            **self.__dict__, use_bias=self.bias is not None
        )


class RMSNorm(Twin, torch.nn.RMSNorm):
    r"""Root Mean Square Layer Normalization (Zhang & Sennrich 2019).

    .. math:: y = \frac{x}{\sqrt{\frac{1}{K}\sum_k x_k^2 + \epsilon}}\,(\delta + \gamma)

    over the K values of the trailing ``normalized_shape`` dims: LayerNorm without centering and bias.

    Args:
        normalized_shape: the trailing shape to normalize over.
        eps: added to the mean square, > 0; ``None`` means torch's default (the epsilon of the statistics' dtype:
            float32 for fp16/bf16 input with ``casting_mode='none'``). Default: None.
        elementwise_affine: learnable ``weight`` of shape ``normalized_shape``, initialized so that the scale
            :math:`\delta + \gamma` is 1. Default: True.
        weight_offset: :math:`\delta`, added to the weight when it scales (keyword only). Gemma stores
            :math:`\gamma - 1` and uses 1. Default: 0.
        casting_mode: the order of casts around the float32 statistics (keyword only): ``"none"`` (torch's
            ``rms_norm``), ``"llama"``, ``"gemma"`` or ``"t5"``; see :data:`normlab.functional.CASTING_MODES`.
            Default: ``"none"``.

    Shape:
        - Input: ``(*, *normalized_shape)``; output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> rms = nl.RMSNorm(16)
        >>> rms(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 16])
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]
    normalized_shape: tuple[int, ...]
    eps: float | None
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: int | Sequence[int] | torch.Size,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        weight_offset: float = 0.0,
        casting_mode: str = "none",
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()  # Twin's: the state is built here, with checks, not by torch's __init__
        self.normalized_shape = _checks.as_shape(type(self).__name__, normalized_shape)
        _checks.check_eps(type(self).__name__, eps, allow_none=True)
        if casting_mode not in NF.CASTING_MODES:
            raise ValueError(
                f"RMSNorm: casting_mode must be one of {', '.join(NF.CASTING_MODES)}, got {casting_mode!r}"
            )
        self.weight_offset, self.casting_mode = float(weight_offset), casting_mode
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            init.constant_(self.weight, 1.0 - self.weight_offset)

    def forward(self, x: Tensor) -> Tensor:
        signature = (x.shape, x.dtype, type(x), self.eps)
        if signature != self._checked:
            _checks.check_floating("rms_norm", x)
            _checks.check_eps("rms_norm", self.eps, allow_none=True)
            _checks.check_trailing("rms_norm", x, self.normalized_shape, weight=self.weight)
            self._checks_passed(signature)
        return NF._rms_norm(x, self.normalized_shape, self.weight, self.eps, self.weight_offset, self.casting_mode)

    def extra_repr(self) -> str:
        text = "{normalized_shape}, eps={eps}, elementwise_affine={elementwise_affine}".format(**self.__dict__)
        if self.weight_offset:
            text += f", weight_offset={self.weight_offset}"
        return text + (f", casting_mode={self.casting_mode!r}" if self.casting_mode != "none" else "")


class LocalResponseNorm(Twin, torch.nn.LocalResponseNorm):
    r"""Local Response Normalization (Krizhevsky et al. 2012) across channels, as ``torch.nn.LocalResponseNorm``.

    .. math:: b_c = a_c\Big(k + \frac{\alpha}{n}\sum_{c'=\max(0, c-n/2)}^{\min(N-1, c+n/2)} a_{c'}^2\Big)^{-\beta}

    No parameters or buffers.

    Args:
        size: n, the channels in each window.
        alpha: the multiplier of the windowed sum. Default: 1e-4.
        beta: the exponent. Default: 0.75.
        k: the additive constant. Default: 1.

    Shape:
        - Input: ``(N, C, *)`` with at least one spatial dim; output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> lrn = nl.LocalResponseNorm(5)
        >>> lrn(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    __constants__ = ["size", "alpha", "beta", "k"]

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()  # Twin's: the state is built here, with checks, not by torch's __init__
        _checks.check_num_features("LocalResponseNorm", size, "size")
        if size < 1:
            raise ValueError(f"LocalResponseNorm: size must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: Tensor) -> Tensor:
        _checks.check_floating("LocalResponseNorm", input)
        _checks.check_min_dim("LocalResponseNorm", input, 3, "(N, C, *)")
        if input.device.type == "cpu" and input.dtype in (torch.float16, torch.bfloat16) and input.dim() > 3:
            # ATen's CPU LRN on maps runs avg_pool3d, which has no fp16/bf16 kernel: compute in float32, round once
            out = torch.nn.functional.local_response_norm(input.float(), self.size, self.alpha, self.beta, self.k)
            return out.to(input.dtype)
        return torch.nn.functional.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)
