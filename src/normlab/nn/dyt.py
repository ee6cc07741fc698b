r"""DyT, Dynamic Tanh (Zhu et al. 2025): a normalization layer replacement with no statistics at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import _checks
from .. import functional as NF
from ._twin import Twin

__all__ = ["DynamicTanh"]


class DynamicTanh(Twin):
    r"""DyT (Zhu et al. 2025, "Transformers without Normalization"): an elementwise stand-in for LayerNorm.

    .. math:: y = \gamma\tanh(\alpha x) + \beta

    with a learnable scalar :math:`\alpha` (init ``alpha_init_value``). No statistics: no batch dependence, no
    train/eval difference.

    Args:
        normalized_shape: the trailing dims ``weight`` and ``bias`` act on (an int for one dim), as LayerNorm's.
        channels_last: True (default) for ``(*, normalized_shape)`` inputs; False for channels-first feature maps
            ``(N, C, *)``, with ``normalized_shape = C`` and the parameters acting on dim 1.
        alpha_init_value: the initial :math:`\alpha`. Default: 0.5.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`, or :math:`(N, C, *)` with ``channels_last=False``.
          Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> dyt = nl.DynamicTanh(16)
        >>> dyt(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        channels_last: bool = True,
        alpha_init_value: float = 0.5,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _checks.as_shape("DynamicTanh", normalized_shape)
        if not channels_last and len(self.normalized_shape) != 1:
            raise ValueError("DynamicTanh: channels_last=False takes one channel count as normalized_shape")
        self.channels_last, self.alpha_init_value = channels_last, alpha_init_value
        kw = {"device": device, "dtype": dtype}
        self.alpha = Parameter(torch.empty(1, **kw))
        self.weight = Parameter(torch.empty(self.normalized_shape, **kw))
        self.bias = Parameter(torch.empty(self.normalized_shape, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.constant_(self.alpha, self.alpha_init_value)
        init.ones_(self.weight)
        init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return NF.dynamic_tanh(input, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, channels_last={self.channels_last}, alpha_init_value={self.alpha_init_value}"
