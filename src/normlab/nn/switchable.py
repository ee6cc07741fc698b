r"""Switchable Normalization (Luo et al. 2018): learn how much of IN, LN and BN to use."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter

from .response import _ChannelNorm, _shape

__all__ = ["SwitchableNorm"]


class SwitchableNorm(_ChannelNorm):
    r"""Switchable Normalization: mean and variance are softmax-weighted mixtures of InstanceNorm's (per (n, c) over
    spatial), LayerNorm's (per n over C and spatial) and BatchNorm's (per c over N and spatial):

    .. math:: \mu = \sum_k w_k\mu_k,\quad \sigma^2 = \sum_k w'_k\sigma^2_k,\quad
              y = \gamma\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}}+\beta,\quad k\in\{IN, LN, BN\}

    with :math:`w = \mathrm{softmax}(\text{mean\_weight})`, :math:`w' = \mathrm{softmax}(\text{var\_weight})`
    (init: equal). BN's part uses running statistics in eval, so the module is batch-dependent in training.
    One-hot weights reduce it to the chosen norm.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
        device: Any = None, dtype: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self._init_channels(num_features, eps)
        kw = {"device": device, "dtype": dtype}
        self.momentum, self.affine = momentum, affine
        self.weight = Parameter(torch.ones(num_features, **kw)) if affine else None
        self.bias = Parameter(torch.zeros(num_features, **kw)) if affine else None
        self.mean_weight = Parameter(torch.ones(3, **kw))
        self.var_weight = Parameter(torch.ones(3, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    def forward(self, input: Tensor) -> Tensor:
        self._check(input)
        n, c = input.shape[:2]
        v = input.reshape(n, c, -1)
        if self.training and v.shape[0] * v.shape[2] == 1:
            raise ValueError("SwitchableNorm: expected more than 1 value per channel when training")
        var_in, mean_in = torch.var_mean(v, dim=2, correction=0, keepdim=True)
        # LN's and BN's variances from IN's by the law of total variance (equal group sizes): the mean of the
        # variances plus the variance of the means. E[x²] - E[x]² would cancel (NaN at mean 1e4, std 1, measured).
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = var_in.mean(0, keepdim=True) + (mean_in - mean_bn).square().mean(0, keepdim=True)
            with torch.no_grad():
                count = n * v.shape[2]
                self.running_mean.lerp_(mean_bn.flatten().to(self.running_mean.dtype), self.momentum)
                unbiased = var_bn.flatten() * count / max(count - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean_bn, var_bn = self.running_mean.view(1, c, 1), self.running_var.view(1, c, 1)
        wm, wv = torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        out = ((v - mean) * torch.rsqrt(var + self.eps)).reshape(input.shape)
        if self.affine:
            out = out * self.weight.view(_shape(input)) + self.bias.view(_shape(input))
        return out
