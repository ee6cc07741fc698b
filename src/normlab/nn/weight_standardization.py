r"""Weight Standardization (Qiao et al. 2019): convolutions whose filters are standardized on the fly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks
from ._twin import Twin

__all__ = ["StdConv1d", "StdConv2d"]


def standardize_filters(weight: Tensor, eps: float) -> Tensor:
    r""":math:`\hat w_o = (w_o - \overline{w_o})/\sqrt{\mathrm{Var}(w_o)+\epsilon}` per output filter: LayerNorm of the
    flattened filters, one fused ATen call."""
    flat = weight.reshape(weight.shape[0], -1)
    return F.layer_norm(flat, flat.shape[1:], eps=eps).reshape(weight.shape)


class _StdConv(Twin):
    eps: float
    weight: Tensor
    bias: Tensor | None

    if TYPE_CHECKING:  # the nn.Conv class this mixin is combined with provides it

        def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor: ...

    def _init_eps(self, eps: float) -> None:
        _checks.check_eps(type(self).__name__, eps)
        self.eps = eps
        self._trace_as_leaf()  # one call in torch.fx graphs, as the nn.Conv it extends: its __init__ is the conv's

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, standardize_filters(self.weight, self.eps), self.bias)


class StdConv1d(_StdConv, nn.Conv1d):
    r"""``nn.Conv1d`` with Weight Standardization (Qiao et al. 2019): each filter is standardized,
    :math:`\hat w_o = (w_o - \overline{w_o})/\sqrt{\mathrm{Var}(w_o)+\epsilon}`, before the convolution. Same
    signature as ``nn.Conv1d`` plus ``eps`` (default 1e-6); same state_dict. Usually followed by GroupNorm.

    Shape:
        - Input: ``(N, C_in, L)``; output: ``(N, C_out, L_out)``, as ``nn.Conv1d``.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> nl.StdConv1d(3, 8, 3, padding=1)(torch.randn(2, 3, 10)).shape
        torch.Size([2, 8, 10])
    """

    def __init__(self, *args: Any, eps: float = 1e-6, **kwargs: Any) -> None:
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._init_eps(eps)


class StdConv2d(_StdConv, nn.Conv2d):
    r"""``nn.Conv2d`` with Weight Standardization (Qiao et al. 2019): each filter is standardized,
    :math:`\hat w_o = (w_o - \overline{w_o})/\sqrt{\mathrm{Var}(w_o)+\epsilon}`, before the convolution. Same
    signature as ``nn.Conv2d`` plus ``eps`` (default 1e-6); same state_dict. Usually followed by GroupNorm.

    Shape:
        - Input: ``(N, C_in, H, W)``; output: ``(N, C_out, H_out, W_out)``, as ``nn.Conv2d``.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> nl.StdConv2d(3, 8, 3, padding=1)(torch.randn(2, 3, 6, 6)).shape
        torch.Size([2, 8, 6, 6])
    """

    def __init__(self, *args: Any, eps: float = 1e-6, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_eps(eps)
