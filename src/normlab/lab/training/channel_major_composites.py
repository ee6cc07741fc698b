"""The pure-ATen composites of the channel-major norms (:mod:`normlab.lab.training.channel_major`), where the
compiled kernel (:mod:`~normlab.lab.training.channel_major_kernel`) does not run (``NORMLAB_NO_KERNELS=1``, a
failed compile, not float32 on the CPU): BatchNorm of rows and GroupNorm of channel-major maps, each with the conv's
bias folded in, forward and backward."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["RowBatchNorm", "GroupNormChannelMajor"]


class RowBatchNorm(torch.autograd.Function):
    """BatchNorm in training of rows ``(1, C, M)`` plus a per-channel conv bias, as ATen's GroupNorm of one channel a
    group (it reads a contiguous row about twice as fast as its batch norm). The bias cancels in the output: its
    gradient is zero; the mean and rstd come back (not differentiable) for the running statistics."""

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, conv_bias: Tensor, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        _, c, m = rows.shape
        out, mean, rstd = torch.native_group_norm(rows, weight, bias, 1, c, m, c, eps)
        ctx.save_for_backward(rows, mean, rstd, weight)
        ctx.mark_non_differentiable(mean, rstd)
        return out, mean, rstd

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor, _mean: Tensor | None, _rstd: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        rows, mean, rstd, weight = ctx.saved_tensors
        _, c, m = rows.shape
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), rows, mean, rstd, weight, 1, c, m, c, [True, True, True]
        )
        return gx, grad.new_zeros(c), gw, gb, None


class GroupNormChannelMajor(torch.autograd.Function):
    """GroupNorm of channel-major maps ``(G, C/G, L, N)`` plus a conv bias per channel (group g's channels together,
    the batch last): statistics per (group, example) over ``(C/G, L)``, affine per channel. The bias is subtracted
    with the mean (``x + b - mean(x + b)``, one pass); the reductions run over the middle axes with the batch
    contiguous; backward is GroupNorm's, with the per-(group, example) sums taken once."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, conv_bias: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        groups, cg, length, n = x.shape
        size = cg * length
        flat = x.view(groups, size, n)
        cb = conv_bias.view(groups, cg)
        cb = (cb - cb.mean(1, keepdim=True)).view(groups, cg, 1, 1)  # the bias less its group mean
        shift = flat.mean(1).view(groups, 1, 1, n) - cb  # (G, C/G, 1, N)
        xc = x - shift  # x + b - mean(x + b); two passes: exact at large means
        var = xc.square().view(groups, size, n).mean(1)  # (G, N); vector_norm reduces the middle axis 4x slower
        rstd = var.add_(eps).rsqrt_().view(groups, 1, 1, n)
        scale = weight.view(groups, cg, 1, 1) * rstd  # (G, C/G, 1, N)
        ctx.save_for_backward(xc, rstd, weight)
        return torch.addcmul(bias.view(groups, cg, 1, 1), xc, scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor, None]:
        xc, rstd, weight = ctx.saved_tensors
        groups, cg, length, n = xc.shape
        grad = grad.contiguous()
        sum_g = grad.sum(2)  # (G, C/G, N)
        sum_gx = (grad * xc).sum(2)  # (G, C/G, N): sum of grad * (x - mean)
        r = rstd.view(groups, 1, n)
        grad_bias = sum_g.sum(-1).view(-1)
        grad_weight = (sum_gx * r).sum(-1).view(-1)
        w = weight.view(groups, cg, 1)
        size = cg * length
        t1 = (w * sum_g).sum(1, keepdim=True)  # (G, 1, N): sum of grad * w
        t2 = (w * sum_gx).sum(1, keepdim=True) * r  # (G, 1, N): sum of grad * w * xhat
        c0 = (-r * t1 / size).view(groups, 1, 1, n)
        c1 = (-r * r * t2 / size).view(groups, 1, 1, n)
        grad_x = torch.addcmul(c0, grad, weight.view(groups, cg, 1, 1) * rstd)
        grad_x.addcmul_(xc, c1)
        grad_conv_bias = grad_x.sum((2, 3)).view(-1) if ctx.needs_input_grad[1] else None
        return grad_x, grad_conv_bias, grad_weight, grad_bias, None
