r"""Per-example normalizations fused with their activation: Filter Response Normalization + TLU, EvoNorm-B0/S0.
Formulas in :mod:`normlab.reference.response`. Inputs ``(N, C, *spatial)`` with at least one spatial dim."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from .. import _checks

__all__ = ["FilterResponseNorm", "TLU", "EvoNormB0", "EvoNormS0"]


def _shape(x: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


class _ChannelNorm(Module):
    """Argument and input checks shared by the modules here."""

    num_features: int

    def _init_channels(self, num_features: int, eps: float) -> None:
        _checks.check_num_features(type(self).__name__, num_features)
        _checks.check_eps(type(self).__name__, eps)
        self.num_features, self.eps = num_features, eps

    def _check(self, input: Tensor) -> None:
        name = type(self).__name__
        _checks.check_floating(name, input)
        if input.dim() < 3:
            raise ValueError(
                f"{name}: expected input of shape (N, C, *spatial) with at least one spatial dim, got shape "
                f"{tuple(input.shape)}; it normalizes each channel over its spatial positions"
            )
        _checks.check_channels(name, input, self.num_features)


class TLU(Module):
    r"""Thresholded Linear Unit: :math:`\max(x, \tau)` with a learnable per-channel :math:`\tau` (init 0)."""

    def __init__(self, num_features: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.tau = Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, input: Tensor) -> Tensor:
        return torch.maximum(input, self.tau.view(_shape(input)))


class FilterResponseNorm(_ChannelNorm):
    r"""Filter Response Normalization + TLU (Singh & Krishnan 2019).

    .. math:: \nu^2 = \frac{1}{|S|}\sum_{s} x_{ncs}^2,\qquad y = \max\Big(\gamma\frac{x}{\sqrt{\nu^2+|\epsilon|}}+\beta,\ \tau\Big)

    per (example, channel) over spatial positions, without centering: no batch dependence, no train/eval
    difference. ``learnable_eps`` makes :math:`\epsilon` a per-channel parameter (its absolute value is used).

    Args:
        num_features: C. eps: > 0, default 1e-6. learnable_eps: default False. tlu: apply the TLU, default True.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False, tlu: bool = True,
        device: Any = None, dtype: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self._init_channels(num_features, eps)
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.ones(num_features, **kw))
        self.bias = Parameter(torch.zeros(num_features, **kw))
        self.tau = Parameter(torch.zeros(num_features, **kw)) if tlu else None
        self.learnable_eps = learnable_eps
        self.eps_param = Parameter(torch.full((num_features,), float(eps), **kw)) if learnable_eps else None

    def forward(self, input: Tensor) -> Tensor:
        self._check(input)
        shape = _shape(input)
        dims = tuple(range(2, input.dim()))
        eps = self.eps_param.abs().view(shape) if self.eps_param is not None else self.eps
        nu2 = input.square().mean(dim=dims, keepdim=True)
        out = input * torch.rsqrt(nu2 + eps) * self.weight.view(shape) + self.bias.view(shape)
        return out if self.tau is None else torch.maximum(out, self.tau.view(shape))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}, tlu={self.tau is not None}"


class EvoNormB0(_ChannelNorm):
    r"""EvoNorm-B0 (Liu et al. 2020): :math:`y = \gamma\,x/\max(\sqrt{\sigma^2_B+\epsilon},\ v_1x+\sqrt{\sigma^2_I+\epsilon})+\beta`.

    :math:`\sigma^2_B`: batch variance per channel (over N and spatial) in training, ``running_var`` in eval (updated
    with momentum from the unbiased batch variance); :math:`\sigma^2_I`: each instance's variance over spatial.
    Batch-dependent in training, like BatchNorm.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        self.momentum = momentum
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.ones(num_features, **kw))
        self.bias = Parameter(torch.zeros(num_features, **kw))
        self.v1 = Parameter(torch.ones(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    def forward(self, input: Tensor) -> Tensor:
        self._check(input)
        shape = _shape(input)
        if self.training:
            if input.numel() == input.shape[1]:
                raise ValueError("EvoNormB0: expected more than 1 value per channel when training")
            dims = (0,) + tuple(range(2, input.dim()))
            var = input.var(dim=dims, unbiased=False)
            with torch.no_grad():
                n = input.numel() // input.shape[1]
                self.running_var.lerp_(var.detach().to(self.running_var.dtype) * n / max(n - 1, 1), self.momentum)
        else:
            var = self.running_var
        inst = input.var(dim=tuple(range(2, input.dim())), unbiased=False, keepdim=True)
        den = torch.maximum((var.view(shape) + self.eps).sqrt(), self.v1.view(shape) * input + (inst + self.eps).sqrt())
        return input / den * self.weight.view(shape) + self.bias.view(shape)


class EvoNormS0(_ChannelNorm):
    r"""EvoNorm-S0 (Liu et al. 2020): :math:`y = \gamma\,\frac{x\,\mathrm{sigmoid}(v_1x)}{\sqrt{\sigma^2_G+\epsilon}}+\beta`
    with :math:`\sigma^2_G` the variance over each (example, group of channels): batch-independent, like GroupNorm.

    Args: num_features: C. groups: a divisor of C (default 32; C itself is used when C < 32). eps: > 0.
    """

    def __init__(
        self, num_features: int, groups: int = 32, eps: float = 1e-5, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        groups = min(groups, num_features) if num_features else groups
        _checks.check_groups("EvoNormS0", groups, num_features)
        self.groups = groups
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.ones(num_features, **kw))
        self.bias = Parameter(torch.zeros(num_features, **kw))
        self.v1 = Parameter(torch.ones(num_features, **kw))

    def forward(self, input: Tensor) -> Tensor:
        self._check(input)
        shape = _shape(input)
        n = input.shape[0]
        grouped = input.reshape(n, self.groups, -1)
        std = (grouped.var(dim=2, unbiased=False, keepdim=True) + self.eps).sqrt()
        std = std.expand_as(grouped).reshape(input.shape)
        return input * torch.sigmoid(self.v1.view(shape) * input) / std * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"
