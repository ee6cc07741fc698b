r"""FrozenBatchNorm2d: BatchNorm with statistics and affine parameters fixed as buffers (fine-tuning detectors)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .. import _checks
from ._twin import Twin

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(Twin):
    r""":math:`y = (x - \mu)\,\gamma/\sqrt{\sigma^2+\epsilon} + \beta` with :math:`\mu,\sigma^2,\gamma,\beta` fixed
    buffers.

    Same buffers as torchvision's ``FrozenBatchNorm2d`` (``weight``, ``bias``, ``running_mean``, ``running_var``), so a
    BatchNorm2d's checkpoint loads into it (``num_batches_tracked`` is dropped). Nothing trains, nothing is tracked,
    training and eval are identical. :meth:`from_batch_norm` freezes an existing BatchNorm.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance, > 0. Default: 1e-5.

    Shape:
        - Input: ``(N, C, H, W)``; output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> bn = torch.nn.BatchNorm2d(8).eval()
        >>> frozen = nl.FrozenBatchNorm2d.from_batch_norm(bn)
        >>> x = torch.randn(2, 8, 5, 5)
        >>> torch.allclose(frozen(x), bn(x), atol=1e-6)
        True
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _checks.check_num_features("FrozenBatchNorm2d", num_features)
        _checks.check_eps("FrozenBatchNorm2d", eps)
        self.num_features, self.eps = num_features, eps
        kw = {"device": device, "dtype": dtype}
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.empty(num_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The identity: weight and running_var 1, bias and running_mean 0."""
        with torch.no_grad():
            self.weight.fill_(1)
            self.bias.zero_()
            self.running_mean.zero_()
            self.running_var.fill_(1)

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm) -> FrozenBatchNorm2d:
        # a BatchNorm that tracks running statistics: its running_mean and running_var are tensors
        running_mean, running_var = cast(Tensor, bn.running_mean), cast(Tensor, bn.running_var)
        frozen = cls(bn.num_features, bn.eps, device=running_mean.device, dtype=running_mean.dtype)
        with torch.no_grad():
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
            frozen.running_mean.copy_(running_mean)
            frozen.running_var.copy_(running_var)
        return frozen

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        _checks.check_floating("FrozenBatchNorm2d", input)
        if input.dim() != 4 or input.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm2d: expected input (N, {self.num_features}, H, W), got {tuple(input.shape)}"
            )
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return input * scale.view(1, -1, 1, 1).to(input.dtype) + shift.view(1, -1, 1, 1).to(input.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
