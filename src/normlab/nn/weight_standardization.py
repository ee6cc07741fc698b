r"""Weight Standardization (Qiao et al. 2019): convolutions whose filters are standardized on the fly."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks

__all__ = ["StdConv1d", "StdConv2d"]


def standardize_filters(weight: Tensor, eps: float) -> Tensor:
    r""":math:`\hat w_o = (w_o - \overline{w_o})/\sqrt{\mathrm{Var}(w_o)+\epsilon}` per output filter: LayerNorm of the
    flattened filters, one fused ATen call."""
    flat = weight.reshape(weight.shape[0], -1)
    return F.layer_norm(flat, flat.shape[1:], eps=eps).reshape(weight.shape)


class _StdConv:
    eps: float

    def _init_eps(self, eps: float) -> None:
        _checks.check_eps(type(self).__name__, eps)
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, standardize_filters(self.weight, self.eps), self.bias)  # type: ignore[attr-defined]


class StdConv1d(_StdConv, nn.Conv1d):
    """``nn.Conv1d`` with Weight Standardization (same signature plus ``eps``; same state_dict). Usually with GN."""

    def __init__(self, *args: Any, eps: float = 1e-6, **kwargs: Any) -> None:
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._init_eps(eps)


class StdConv2d(_StdConv, nn.Conv2d):
    """``nn.Conv2d`` with Weight Standardization (same signature plus ``eps``; same state_dict). Usually with GN."""

    def __init__(self, *args: Any, eps: float = 1e-6, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_eps(eps)
