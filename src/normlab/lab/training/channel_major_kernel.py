"""The compiled CPU kernel of the packed ConvNet's norm layers in the matmul form (``csrc/channel_major.cpp``):
GroupNorm (LayerNorm packs as one) and training-mode BatchNorm of channel-major maps, each with the conv's bias
folded in, the affine and the ReLU in the same pass, forward and backward (formulas at the top of the C++ file).

:func:`channel_major_kernel` returns the compiled module, or None where the caller takes its pure-ATen composite
(:mod:`normlab.lab.training.channel_major`): ``NORMLAB_NO_KERNELS=1`` (read at every call), or a failed compile
(warned once a process, not retried). It is a :class:`normlab.functional._kernels.Kernel` like normlab's other
kernels: the same cache, flags per CPU capability, naming by content and compile-once state.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ...functional._kernels import Kernel

__all__ = ["channel_major_kernel", "GroupNormReLU", "RowBatchNormReLU", "SplitNormReLU", "NO_TABLE", "CHANNEL_MAJOR"]

# The kernels' output layout when no table is given: the input's own (see the top of csrc/channel_major.cpp).
NO_TABLE = torch.empty(0, dtype=torch.long)

CHANNEL_MAJOR = Kernel(
    Path(__file__).with_name("csrc") / "channel_major.cpp",
    "channel-major norm",
    "the packed ConvNet's norms run on their pure-ATen path",
    ("channel_major_common.h", "channel_major_small.h", "channel_major_rows.h"),
)


def channel_major_kernel() -> ModuleType | None:
    """The compiled module (``group_forward``, ``group_backward``, ``row_forward``, ``row_backward``), compiled on the
    first call; None if kernels are disabled or the compile failed (warned once)."""
    return CHANNEL_MAJOR.module()


class GroupNormReLU(torch.autograd.Function):
    """``relu(group_norm(x + conv_bias) * weight + bias)`` (``relu`` False: without the ReLU) of channel-major maps
    ``x`` ``(G, S, N)`` contiguous float32, ``S = C/G * L``: statistics per (group, example) over the group's S
    values, ``conv_bias``, ``weight``, ``bias`` per channel ``(C,)``. Forward one kernel call (three passes over a
    group, one write), backward one (two passes, one write), all four gradients; the ReLU's mask is recomputed
    from ``x``, whose saved copy is the conv's own output (nothing else saved at the maps' size).

    ``dest`` ``(L, 2)`` and ``out_rows`` (``L = S / (C/G)``): the output layout, ``(G, C/G * out_rows, N)``, each
    position l of a channel written to its rows ``dest[l]`` (-1: none), the other rows 0 (the next conv's taps:
    :func:`~normlab.lab.training.conv_forms.tap_rows`); the default, x's layout."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        conv_bias: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: float,
        relu: bool,
        kernel: Any,
        dest: Tensor = NO_TABLE,
        out_rows: int = 0,
    ) -> Tensor:
        cg = weight.numel() // x.shape[0]
        y, mean, rstd = kernel.group_forward(x, cg, conv_bias, weight, bias, eps, relu, dest, out_rows)
        ctx.save_for_backward(x, conv_bias, weight, bias, mean, rstd)
        ctx.relu, ctx.kernel, ctx.layout = relu, kernel, (dest, out_rows)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, conv_bias, weight, bias, mean, rstd = ctx.saved_tensors
        cg = weight.numel() // x.shape[0]
        gx, gw, gb, gcb = ctx.kernel.group_backward(
            grad.contiguous(), x, cg, conv_bias, weight, bias, mean, rstd, ctx.relu, *ctx.layout
        )
        return gx, gcb, gw, gb, None, None, None, None, None


class RowBatchNormReLU(torch.autograd.Function):
    """``relu(batch_norm(rows) * weight + bias)`` in training (``relu`` False: without the ReLU) of rows ``(R, M)``
    contiguous float32, each row one channel's values over the batch and positions; the conv's bias cancels (its
    gradient is zero) and enters only the running mean, which the caller updates from the returned mean and biased
    variance ``(R,)`` (not differentiable). ``dest`` ``(L, 2)`` and ``out_rows``: the output layout as
    :class:`GroupNormReLU`'s, a row being L positions of ``M / L`` values; ``(R, out_rows * M / L)``."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: Tensor,
        conv_bias: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: float,
        relu: bool,
        kernel: Any,
        dest: Tensor = NO_TABLE,
        out_rows: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, stats = kernel.row_forward(rows, weight, bias, eps, relu, dest, out_rows)
        shifted_mean, rstd, mean, var = stats.unbind(0)
        ctx.save_for_backward(rows, weight, bias, shifted_mean, rstd)
        ctx.relu, ctx.kernel, ctx.layout = relu, kernel, (dest, out_rows)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _mean: Tensor | None, _var: Tensor | None) -> tuple[Tensor | None, ...]:
        rows, weight, bias, shifted_mean, rstd = ctx.saved_tensors
        gx, gw, gb = ctx.kernel.row_backward(
            grad.contiguous(), rows, weight, bias, shifted_mean, rstd, ctx.relu, *ctx.layout
        )
        return gx, gx.new_zeros(rows.shape[0]), gw, gb, None, None, None, None, None


class SplitNormReLU(torch.autograd.Function):
    """A mixed pack's norm layer (each part a group of consecutive runs, its own norm) plus the ReLU, all parts in
    one autograd node and one kernel call each way (``split_forward``, ``split_backward``): :class:`RowBatchNormReLU`
    or :class:`GroupNormReLU` of each part's slice of channel-major maps ``y`` ``(K, C, L*N)`` contiguous float32,
    each writing its slice of one output ``(K, C * out_rows * N)`` (``out_rows`` 0: ``L``; ``dest``, ``out_rows``
    as :class:`GroupNormReLU`'s), and backward each part's gradient into its slice of one ``grad_y``: no
    concatenation either way, where a node a part, its Python and a ``torch.cat`` after them cost more than the
    kernels at a small batch. The same kernels as the parts run alone: equal bit for bit.

    Part i: ``runs[i]`` runs, ``groups[i]`` groups over its ``runs[i] * C`` channels (GroupNorm: LayerNorm,
    InstanceNorm) or 0 (BatchNorm in training), ``eps[i]``; ``params``: each part's weight and bias
    ``(runs[i] * C,)``, in order; ``conv_bias`` ``(K * C,)``. Returns the output, then the mean and biased variance
    ``(runs[i] * C,)`` of each BatchNorm part (not differentiable: the caller's running statistics)."""

    @staticmethod
    def forward(
        ctx: Any,
        y: Tensor,
        conv_bias: Tensor,
        n: int,
        runs: list[int],
        groups: list[int],
        eps: list[float],
        relu: bool,
        kernel: Any,
        dest: Tensor,
        out_rows: int,
        *params: Tensor,
    ) -> tuple[Tensor, ...]:
        out, saved, stats = kernel.split_forward(y, conv_bias, n, runs, groups, eps, params, relu, dest, out_rows)
        ctx.save_for_backward(y, conv_bias, *params, *saved)
        ctx.setup = (n, runs, groups, relu, kernel, dest, out_rows, len(params))
        ctx.mark_non_differentiable(*stats)
        return (out, *stats)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, *_stats: Tensor | None) -> tuple[Tensor | None, ...]:
        n, runs, groups, relu, kernel, dest, out_rows, count = ctx.setup
        y, conv_bias, *rest = ctx.saved_tensors
        grad_y, grad_cb, grad_params = kernel.split_backward(
            grad.contiguous(), y, conv_bias, n, runs, groups, rest[:count], rest[count:], relu, dest, out_rows
        )
        return grad_y, grad_cb, None, None, None, None, None, None, None, None, *grad_params
