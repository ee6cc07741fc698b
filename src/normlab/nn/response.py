r"""Per-example normalizations fused with their activation: Filter Response Normalization + TLU, EvoNorm-B0/S0.
Formulas and analytic backwards in :mod:`normlab.reference.response`; functional forms in
:mod:`normlab.functional`. Inputs ``(N, C, *spatial)`` with at least one spatial dim."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import _checks
from .. import functional as NF
from ._twin import Twin

__all__ = ["FilterResponseNorm", "TLU", "EvoNormB0", "EvoNormS0"]


class _ChannelNorm(Twin):
    """Constructor checks shared by the per-channel modules of the catalog."""

    num_features: int

    def _init_channels(self, num_features: int, eps: float) -> None:
        _checks.check_num_features(type(self).__name__, num_features)
        _checks.check_eps(type(self).__name__, eps)
        self.num_features, self.eps = num_features, eps

    def _check_channels(self, input: Tensor) -> None:
        name = type(self).__name__
        _checks.check_floating(name, input)
        if input.dim() < 3:
            raise ValueError(
                f"{name}: expected input of shape (N, C, *spatial) with at least one spatial dim, got shape "
                f"{tuple(input.shape)}; it normalizes each channel over its spatial positions"
            )
        _checks.check_channels(name, input, self.num_features)


class TLU(Twin):
    r"""Thresholded Linear Unit (Singh & Krishnan 2019), FRN's activation.

    .. math:: y = \max(x, \tau_c)

    with a learnable threshold per channel (init 0, where it is a ReLU).

    Args:
        num_features: C, the channels of the input.

    Shape:
        - Input: :math:`(N, C, *)`. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> tlu = nl.TLU(4)
        >>> tlu(torch.tensor([[-1.0, 2.0, -3.0, 0.5]])).tolist()
        [[0.0, 2.0, 0.0, 0.5]]
    """

    def __init__(self, num_features: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _checks.check_num_features("TLU", num_features)
        self.num_features = num_features
        self.tau = Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.zeros_(self.tau)

    def forward(self, input: Tensor) -> Tensor:
        return NF.tlu(input, self.tau)

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class FilterResponseNorm(_ChannelNorm):
    r"""Filter Response Normalization + TLU (Singh & Krishnan 2019, "Filter Response Normalization Layer").

    .. math:: \nu^2_{nc} = \frac{1}{|S|}\sum_{s} x_{ncs}^2,\qquad
              y = \max\Big(\gamma_c\frac{x}{\sqrt{\nu^2_{nc}+|\epsilon|}}+\beta_c,\ \tau_c\Big)

    The mean square per (example, channel) over spatial positions, without centering: no batch dependence, no
    train/eval difference. The max is the TLU, so FRN replaces a norm *and* its activation.

    Args:
        num_features: C, the channels of the input.
        eps: added to the mean square, > 0. Default: 1e-6.
        learnable_eps: make epsilon a per-channel parameter ``eps_param`` (its absolute value is used).
            Default: False.
        tlu: apply the TLU (the max with a learnable ``tau``). Default: True.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> frn = nl.FilterResponseNorm(8)
        >>> frn(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        learnable_eps: bool = False,
        tlu: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        kw = {"device": device, "dtype": dtype}
        self.learnable_eps = learnable_eps
        self.weight = Parameter(torch.empty(num_features, **kw))
        self.bias = Parameter(torch.empty(num_features, **kw))
        self.tau = Parameter(torch.empty(num_features, **kw)) if tlu else None
        self.eps_param = Parameter(torch.empty(num_features, **kw)) if learnable_eps else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.ones_(self.weight)
        init.zeros_(self.bias)
        if self.tau is not None:
            init.zeros_(self.tau)
        if self.eps_param is not None:
            init.constant_(self.eps_param, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input)
        eps = self.eps_param if self.eps_param is not None else self.eps
        return NF.filter_response_norm(input, self.weight, self.bias, self.tau, eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}, tlu={self.tau is not None}"


class EvoNormB0(_ChannelNorm):
    r"""EvoNorm-B0 (Liu et al. 2020, "Evolving Normalization-Activation Layers").

    .. math:: y = \gamma_c\,\frac{x}{\max\big(\sqrt{\sigma^2_{B,c}+\epsilon},
              \ v_{1,c}\,x+\sqrt{\sigma^2_{I,nc}+\epsilon}\big)}+\beta_c

    :math:`\sigma^2_B`: the batch variance per channel (over N and spatial) in training, ``running_var`` in eval
    (updated with ``momentum`` from the unbiased batch variance); :math:`\sigma^2_I`: each instance's variance over
    spatial positions. Batch-dependent in training, like BatchNorm; it replaces a norm and its activation.

    Args:
        num_features: C, the channels of the input.
        eps: added to the variances, > 0. Default: 1e-5.
        momentum: the running variance's update rate. Default: 0.1.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> b0 = nl.EvoNormB0(8)
        >>> b0(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        self.momentum = momentum
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.empty(num_features, **kw))
        self.bias = Parameter(torch.empty(num_features, **kw))
        self.v1 = Parameter(torch.empty(num_features, **kw))
        self.register_buffer("running_var", torch.empty(num_features, **kw))
        self.running_var: Tensor
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        init.ones_(self.running_var)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        init.ones_(self.weight)
        init.zeros_(self.bias)
        init.ones_(self.v1)

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input)
        return NF.evonorm_b0(
            input, self.running_var, self.weight, self.bias, self.v1, self.training, self.momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class EvoNormS0(_ChannelNorm):
    r"""EvoNorm-S0 (Liu et al. 2020, "Evolving Normalization-Activation Layers").

    .. math:: y = \gamma_c\,\frac{x\,\mathrm{sigmoid}(v_{1,c}\,x)}{\sqrt{\sigma^2_{G}+\epsilon}}+\beta_c

    :math:`\sigma^2_G`: the variance over each (example, group of ``C / num_groups`` channels) and its spatial
    positions: batch-independent, like GroupNorm; the swish-like numerator makes it a norm and activation in one.

    Args:
        num_features: C, the channels of the input.
        num_groups: a divisor of C. Default: 32 (C itself when C < 32).
        eps: added to the variance, > 0. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> s0 = nl.EvoNormS0(8, num_groups=4)
        >>> s0(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self, num_features: int, num_groups: int = 32, eps: float = 1e-5, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        num_groups = min(num_groups, num_features) if num_features else num_groups
        _checks.check_groups("EvoNormS0", num_groups, num_features)
        self.num_groups = num_groups
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.empty(num_features, **kw))
        self.bias = Parameter(torch.empty(num_features, **kw))
        self.v1 = Parameter(torch.empty(num_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.ones_(self.weight)
        init.zeros_(self.bias)
        init.ones_(self.v1)

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input)
        return NF.evonorm_s0(input, self.num_groups, self.weight, self.bias, self.v1, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}"
