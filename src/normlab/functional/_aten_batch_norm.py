"""Exact training-mode BatchNorm of CPU channels_last input by ATen's own kernels: the fallback of
:func:`normlab.functional.batch_norm` where the compiled kernel does not run (``NORMLAB_NO_KERNELS=1``, no compiler,
parameters of another dtype than the input).

ATen's channels_last kernels sum each channel in one float32 running sum per thread, which at mean 1e4, std 1 is
off by about 1e-2 of the std. Two ways around it, by size (:func:`_channels_last_batch_norm`): small inputs run
ATen's training kernel on the input shifted by its first positions' mean per channel (:func:`_shifted_batch_norm`);
large ones run its statistics kernel on short blocks of rows, whose statistics are combined in float64, then its
eval-mode normalize and fused backward given them (:class:`_ChannelsLastBatchNorm`).
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from torch import Tensor


def _channels_last_format(input: Tensor) -> torch.memory_format | None:
    """The channels_last format ``input`` is laid out in, or None if it is plain contiguous (or neither)."""
    if input.is_contiguous():
        return None
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


_BLOCK_ROWS = 512
"""The longest run of rows ATen's channels_last statistics kernel sums in float32 in :class:`_ChannelsLastBatchNorm`."""

_SHIFT_ROWS = 32
"""The positions whose statistics per channel decide, and whose mean shifts the input, in
:func:`_shifted_batch_norm`: within a fraction of a standard deviation of the batch mean."""

_SHIFT_BELOW = 1 << 18
"""Without the compiled kernel: below this many elements, channels_last training BatchNorm takes the shifted-input
path (one more elementwise pass, fewer Python calls); from it on, the Function (no extra pass, about 15 more small
calls)."""


@functools.lru_cache(maxsize=256)
def _block_rows(rows: int, limit: int) -> int:
    """The largest divisor of ``rows`` that is at most ``limit``."""
    return next(d for d in range(min(rows, limit), 0, -1) if rows % d == 0)


def _centered(mean: Tensor, var: Tensor) -> bool:
    """Whether every sampled statistic is centered, ``|mean| <= 2 std``: ATen's one-pass channels_last kernels are
    exact on such values, so no shift is needed (never under torch.compile, which cannot branch on data)."""
    return not torch.compiler.is_compiling() and bool(var.mul(4).ge_(mean.square()).all())


def _shifted_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """Training-mode BatchNorm of channels_last ``input`` as ATen's channels_last kernel computes it, on the input
    itself when its first :data:`_SHIFT_ROWS` positions are centered (per channel, ``|mean| <= 2 std``), else on
    ``input - s`` with ``s`` per channel the mean of those positions (one reduction over one contiguous block of
    the channels_last memory gives both).

    ATen's float32 running sums of the mean lose about ``|mean| / std * sqrt(n) * 6e-8`` of the std (1e-2 at mean
    1e4, std 1), and its backward sums ``x * dy`` and takes ``mean * sum(dy)`` off: harmless on centered values,
    and BatchNorm's output and gradients do not depend on a per-channel shift. ``s`` is detached: the output does
    not depend on it. The running mean is updated as ATen does, on a shifted copy that gets ``s`` back:
    ``r - s <- (1 - m) (r - s) + m (mean - s)``. Centered input costs one small reduction more than torch's own
    call; the shift one elementwise pass more: the path for small inputs.
    """
    channels = input.shape[1]
    first = input.detach().as_strided((min(input.numel() // channels, _SHIFT_ROWS), channels), (channels, 1))
    mean, var = torch.batch_norm_update_stats(first, None, None, 0.0)  # C fastest: ATen's channels_last kernel
    if _centered(mean, var):
        return torch.batch_norm(input, weight, bias, running_mean, running_var, True, momentum, eps, False)
    shift = mean.view((1, channels) + (1,) * (input.dim() - 2))
    if running_mean is None:
        return torch.batch_norm(input - shift, weight, bias, None, running_var, True, momentum, eps, False)
    flat = mean.to(running_mean.dtype)
    shifted_mean = running_mean - flat
    out = torch.batch_norm(input - shift, weight, bias, shifted_mean, running_var, True, momentum, eps, False)
    running_mean.copy_(shifted_mean + flat)  # not shifted_mean.add_: autograd saved it
    return out


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm on CPU channels_last input: exact, in the input's layout, as fast as ATen's own.

    ATen's channels_last statistics kernel sums each channel's values in one float32 running sum per thread, which
    at mean 1e4, std 1 is off by about 1e-2 of the std. Here the same kernel (``batch_norm_update_stats``, two
    reads of the input, as ATen's own forward) runs on a free view of the ``(N*spatial, C)`` matrix as
    ``(B, K*C)`` with ``B`` at most :data:`_BLOCK_ROWS` rows: every float32 sum runs over at most ``B`` values,
    centered on its own mean for the variance. The ``K`` block means and variances per channel are combined in
    float64 (mean of means; mean of variances plus the variance of the means): the statistics of the whole batch.
    The output is ATen's eval-mode channels_last kernel given them (one read, one write, as ATen's own normalize),
    the backward ATen's fused channels_last training-mode backward given the saved (float32) mean and invstd,
    with ``dgamma`` corrected for the saved mean's rounding (``- invstd * (mean - saved_mean) * dbeta``); that
    backward is differentiable itself (ATen's double backward treats the saved statistics as functions of the
    input). fp16/bf16 input runs ATen's mixed-type kernels with float32 statistics and parameters, and the
    parameters' gradients come back in their dtype. The running buffers are updated as ATen does:
    ``r <- (1 - momentum) * r + momentum * s`` in float64, with the unbiased variance.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        block: int,
    ) -> Tensor:
        channels = input.shape[1]
        columns = input.numel() // block
        blocks = input.as_strided((block, columns), (columns, 1))  # the channels_last memory, C fastest
        if input.dtype == torch.float32:
            means, variances = torch.batch_norm_update_stats(blocks, None, None, 0.0)
        else:  # float32 buffers select ATen's mixed-type kernel: float32 statistics (momentum 0: left as they are)
            scratch = torch.empty((2, columns), dtype=torch.float32, device=input.device)
            means, variances = torch.batch_norm_update_stats(blocks, scratch[0], scratch[1], 0.0)
        block_means = means.view(-1, channels).double()
        mean = block_means.mean(0)
        centered = block_means.sub_(mean)  # var_mean's Welford loop is slower on these few values
        var = centered.mul_(centered).add_(variances.view(-1, channels)).mean(0)
        count = input.numel() // channels
        for buffer, value in ((running_mean, mean), (running_var, var * count / (count - 1))):
            if buffer is not None:
                buffer.copy_(buffer.double().mul_(1 - momentum).add_(value, alpha=momentum))
        w32 = None if weight is None else weight.float()
        b32 = None if bias is None else bias.float()
        saved_mean = mean.float()
        out = torch.native_batch_norm(input, w32, b32, saved_mean, var.float(), False, 0.0, eps)[0]
        ctx.save_for_backward(input, w32, saved_mean, (var + eps).rsqrt().float(), (mean - saved_mean.double()).float())
        ctx.eps = eps
        ctx.dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None, None, None]:
        input, weight, mean, invstd, residual = ctx.saved_tensors
        # ATen's fused channels_last backward runs only when dy shares the input's layout; any other (the expanded
        # gradient of a .sum(), say) takes its generic path, several times slower than this copy. (The input is
        # channels_last here, so its format is never None.)
        grad_output = grad_output.contiguous(memory_format=cast(torch.memory_format, _channels_last_format(input)))
        need_weight = weight is not None and ctx.needs_input_grad[1]
        mask = [ctx.needs_input_grad[0], need_weight, ctx.needs_input_grad[2] or need_weight]
        grad_input, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output, input, weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        if need_weight:  # sum(dy * (x - mean)) * invstd for the exact mean: the saved one is off by the residual
            grad_weight = (grad_weight - invstd * residual * grad_bias).to(ctx.dtypes[0])
        grad_bias = grad_bias.to(ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def _channels_last_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """Exact training-mode BatchNorm of CPU channels_last ``input`` by ATen's kernels, where the compiled one
    (:func:`normlab.functional.channels_last.batch_norm`, which :func:`normlab.functional.batch_norm` tries first)
    does not run: the shifted input below :data:`_SHIFT_BELOW` elements, :class:`_ChannelsLastBatchNorm` from it on,
    and float64 (whose ATen sums are float64) as is."""
    numel = input.numel()
    if input.dtype == torch.float64:
        return torch.batch_norm(input, weight, bias, running_mean, running_var, True, momentum, eps, False)
    if numel >= _SHIFT_BELOW:
        block = _block_rows(numel // input.shape[1], _BLOCK_ROWS)
        if block * 8 >= _BLOCK_ROWS:  # else (a prime number of rows, say) the blocks would be too short
            return _ChannelsLastBatchNorm.apply(input, weight, bias, running_mean, running_var, momentum, eps, block)
    return _shifted_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps)
