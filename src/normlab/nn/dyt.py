r"""DyT, Dynamic Tanh (Zhu et al. 2025): a normalization layer replacement with no statistics at all."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from .. import _checks

__all__ = ["DynamicTanh"]


class DynamicTanh(Module):
    r""":math:`y = \gamma\tanh(\alpha x) + \beta`, with a learnable scalar :math:`\alpha` (init ``alpha_init_value``).

    Drop-in for LayerNorm in transformers: ``weight`` and ``bias`` have ``normalized_shape`` and act on the trailing
    dims. With ``channels_last=False`` (feature maps ``(N, C, *)``), they have shape ``(C,)`` and act on dim 1.
    No batch dependence, no train/eval difference; elementwise, so every shape works.
    """

    def __init__(
        self, normalized_shape: int | Sequence[int], channels_last: bool = True, alpha_init_value: float = 0.5,
        device: Any = None, dtype: Any = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.normalized_shape = _checks.as_shape("DynamicTanh", normalized_shape)
        if not channels_last and len(self.normalized_shape) != 1:
            raise ValueError("DynamicTanh: channels_last=False takes one channel count as normalized_shape")
        self.channels_last, self.alpha_init_value = channels_last, alpha_init_value
        kw = {"device": device, "dtype": dtype}
        self.alpha = Parameter(torch.full((1,), float(alpha_init_value), **kw))
        self.weight = Parameter(torch.ones(self.normalized_shape, **kw))
        self.bias = Parameter(torch.zeros(self.normalized_shape, **kw))

    def forward(self, input: Tensor) -> Tensor:
        _checks.check_floating("DynamicTanh", input)
        if self.channels_last:
            _checks.check_trailing("DynamicTanh", input, self.normalized_shape)
            weight, bias = self.weight, self.bias
        else:
            if input.dim() < 2 or input.shape[1] != self.normalized_shape[0]:
                raise ValueError(f"DynamicTanh: expected input (N, {self.normalized_shape[0]}, *), got {tuple(input.shape)}")
            shape = (1, -1) + (1,) * (input.dim() - 2)
            weight, bias = self.weight.view(shape), self.bias.view(shape)
        return torch.tanh(self.alpha * input) * weight + bias

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, channels_last={self.channels_last}, alpha_init_value={self.alpha_init_value}"
