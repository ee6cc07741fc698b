r"""Switchable Normalization (Luo et al. 2018): learn how much of IN, LN and BN to use."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import functional as NF
from .response import _ChannelNorm

__all__ = ["SwitchableNorm"]


class SwitchableNorm(_ChannelNorm):
    r"""Switchable Normalization (Luo et al. 2018, "Differentiable Learning-to-Normalize via Switchable
    Normalization").

    Mean and variance are softmax-weighted mixtures of InstanceNorm's (per (n, c) over spatial), LayerNorm's (per n
    over C and spatial) and BatchNorm's (per c over N and spatial):

    .. math:: \mu = \sum_k w_k\mu_k,\quad \sigma^2 = \sum_k w'_k\sigma^2_k,\quad
              y = \gamma\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}}+\beta,\quad k\in\{IN, LN, BN\}

    with :math:`w = \mathrm{softmax}(\text{mean\_weight})`, :math:`w' = \mathrm{softmax}(\text{var\_weight})`
    (init: equal). LN's and BN's variances come from IN's by the law of total variance, without cancellation.
    BN's part uses running statistics in eval, so the module is batch-dependent in training. One-hot weights reduce
    it to the chosen norm.

    Args:
        num_features: C, the channels of the input.
        eps: added to the variance, > 0. Default: 1e-5.
        momentum: the running statistics' update rate. Default: 0.1.
        affine: learnable per-channel ``weight`` and ``bias``. Default: True.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> sn = nl.SwitchableNorm(8)
        >>> sn(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        kw = {"device": device, "dtype": dtype}
        self.momentum, self.affine = momentum, affine
        self.weight = Parameter(torch.empty(num_features, **kw)) if affine else None
        self.bias = Parameter(torch.empty(num_features, **kw)) if affine else None
        self.mean_weight = Parameter(torch.empty(3, **kw))
        self.var_weight = Parameter(torch.empty(3, **kw))
        self.register_buffer("running_mean", torch.empty(num_features, **kw))
        self.register_buffer("running_var", torch.empty(num_features, **kw))
        self.running_mean: Tensor
        self.running_var: Tensor
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        init.zeros_(self.running_mean)
        init.ones_(self.running_var)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        init.ones_(self.mean_weight)
        init.ones_(self.var_weight)
        if self.affine:  # then weight and bias are parameters
            init.ones_(cast(Tensor, self.weight))
            init.zeros_(cast(Tensor, self.bias))

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input)
        return NF.switchable_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.mean_weight,
            self.var_weight,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
