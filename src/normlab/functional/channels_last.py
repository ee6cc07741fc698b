r"""The compiled channels_last normalization kernel's Python side (``csrc/channels_last.cpp``, ``csrc/columns.cpp``
and ``csrc/batch_norm.cpp``, loaded by :func:`normlab.functional._kernels.channels_last_kernel`): InstanceNorm,
training-mode BatchNorm (2-d and 3-d maps) and GroupNorm of CPU channels_last input, exact at any mean, in the
input's layout (output and input gradient channels_last).

The memory of a channels_last ``(N, C, *spatial)`` tensor is an ``(N, positions, C)`` matrix: the kernel
normalizes it per (group, channel), with ``N`` groups (InstanceNorm: each (n, channel) column walked by one task)
or one (BatchNorm: the ``(N * positions, C)`` matrix split into blocks of rows, their partial sums added in
float64), and needs no copy.

InstanceNorm and BatchNorm run the kernel's own autograd Function (``kernel.norm``, C++: a call costs what one of
ATen's does, and the backward runs without Python). Over the ``L`` values of each (group, channel) (the sources
have the formulas): the mean and the sum of squares of the values less a shift near the mean (one pass, a centered
second one where it would cancel: exact at any mean), accumulated in float32 for fp16/bf16;
:math:`y = (x - \mu)\,(\mathrm{rstd}\,w) + b`. Backward, with :math:`S = \sum dy`, :math:`T = \sum dy\,(x-\mu)`:
:math:`dx = \mathrm{rstd}\,w\,(dy - S/L) - (x - \mu)\,w\,\mathrm{rstd}^3\,T/L`,
:math:`dw = \sum T\,\mathrm{rstd}`, :math:`db = \sum S` (summed over the groups in order: deterministic). The
running buffers are updated by the kernel (float64 arithmetic, ATen's formula with the unbiased variance, the
average over the groups). A second derivative (``create_graph=True``), or a backward under vmap, differentiates
ATen's composite instead. GroupNorm's Function (:class:`_ChannelsLastGroupNorm`) is Python's.

Each function returns None where the kernel does not apply (no kernel, a dtype or layout it does not take,
parameters of another dtype than the input), and the caller takes its ATen path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _kernels
from .rms import _is_plain

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _composite_grads(
    composite: Callable[[], Tensor], tensors: tuple[Tensor | None, ...], need: tuple[bool, ...], grad_output: Tensor
) -> tuple[Tensor | None, ...]:
    """The gradients of ATen's ``composite()`` with respect to the ``tensors`` marked in ``need`` (None for the
    others): a kernel Function's backward under ``create_graph`` (a second derivative) or vmap."""
    wanted = [t for t, n in zip(tensors, need, strict=True) if n and t is not None]
    with torch.enable_grad():
        out = composite()
    grads = iter(torch.autograd.grad(out, wanted, grad_output, create_graph=torch.is_grad_enabled()))
    return tuple(next(grads) if n else None for n in need)


def _kernel_grads(
    dx: Tensor | None,
    dw: Tensor | None,
    db: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """The kernel's (input, weight, bias) gradients as autograd wants them: the parameters' float32 sums of
    fp16/bf16 parameters in their dtype, None where not needed."""
    if weight is not None and bias is not None and (need[1] or need[2]) and dw is not None and db is not None:
        if dw.dtype != weight.dtype:
            dw, db = dw.to(weight.dtype), db.to(bias.dtype)
    return dx, dw if need[1] else None, db if need[2] else None


class _ChannelsLastGroupNorm(torch.autograd.Function):
    r"""GroupNorm of channels_last CPU input by the compiled kernel (``group_forward`` / ``group_backward`` of
    ``csrc/columns.cpp``): each (example, channel) column's statistics as the kernel's InstanceNorm,
    combined per (example, group) in float64 (mean of the means, mean of the variances plus the variance of the
    means), then the output; backward :math:`dx = \mathrm{rstd}\,(w\,dy - \tfrac{A}{KL}) - (x-\mu)\,\mathrm{rstd}^3
    \tfrac{B}{KL}` with :math:`A`, :math:`B` the group's sums of :math:`w\,dy` and :math:`w\,dy\,(x-\mu)` over its
    ``K`` channels' ``L`` positions. A second derivative differentiates ATen's composite."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, num_groups: int, kernel: Any
    ) -> Tensor:
        out, mean, rstd = kernel.group_forward(input, num_groups, weight, bias, eps)
        ctx.save_for_backward(input, weight, bias, mean, rstd)
        ctx.eps, ctx.num_groups, ctx.kernel = eps, num_groups, kernel
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, bias, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or not _is_plain(grad_output):  # create_graph (or vmap): ATen's composite
            grads = _composite_grads(
                lambda: torch.group_norm(input, ctx.num_groups, weight, bias, ctx.eps, False),
                (input, weight, bias),
                need,
                grad_output,
            )
            return grads + (None,) * 3
        need_affine = weight is not None and (need[1] or need[2])
        dx, dw, db = ctx.kernel.group_backward(
            grad_output, input, ctx.num_groups, mean, rstd, weight, need[0], need_affine
        )
        return _kernel_grads(dx, dw, db, weight, bias, need) + (None,) * 3


_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _kernel_for(input: Tensor, *tensors: Tensor | None) -> Any:
    """The compiled kernel if it takes these arguments (CPU channels_last input of a supported dtype, a plain
    tensor, not under torch.compile nor a functorch transform; ``tensors``: weight, bias (both or neither, of the
    input's dtype), running buffers (contiguous)), else None. (Cheapest checks first: it runs on every call, and
    small inputs feel every microsecond.)"""
    if torch.compiler.is_compiling():  # first: the checks below call functorch's C++, which dynamo cannot trace
        return None
    weight, bias = tensors[:2]
    fmt = _FORMATS.get(input.dim())
    if (
        fmt is None
        or type(input) is not Tensor
        or input.dtype not in _DTYPES
        or not input.is_cpu
        or input.is_contiguous()
        or not input.is_contiguous(memory_format=fmt)
        or input.numel() == 0
        or (weight is None) != (bias is None)
        or (weight is not None and not (weight.dtype == input.dtype == bias.dtype))  # type: ignore[union-attr]
        # under vmap / grad / jvp any argument may be a functorch wrapper (the parameters alone, say): ATen's path
        or torch._C._are_functorch_transforms_active()
        or torch._C._functorch.is_legacy_batchedtensor(input)
    ):
        return None
    for t in tensors:  # Parameters are plain tensors underneath; another subclass's .data is looked at
        if t is not None and not (
            t.is_cpu and t.is_contiguous() and (type(t) is Tensor or type(t) is torch.nn.Parameter or _is_plain(t.data))
        ):
            return None
    return _kernels.channels_last_kernel()


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor | None:
    """InstanceNorm with the input's statistics of channels_last ``input`` by the kernel, or None; running buffers
    are updated as ATen does, with the batch average of the per-instance mean and unbiased variance."""
    kernel = _kernel_for(input, weight, bias, running_mean, running_var)
    if kernel is None:
        return None
    out: Tensor = kernel.norm(input, weight, bias, eps, input.shape[0], running_mean, running_var, momentum)
    return out


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor | None:
    """Training-mode BatchNorm of channels_last ``input`` by the kernel, or None; the running buffers are updated as
    ATen does, ``r <- (1 - momentum) r + momentum s`` with the unbiased variance."""
    kernel = _kernel_for(input, weight, bias, running_mean, running_var)
    if kernel is None:
        return None
    out: Tensor = kernel.norm(input, weight, bias, eps, 1, running_mean, running_var, momentum)
    return out


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor | None:
    """GroupNorm of channels_last ``input`` by the kernel, or None."""
    # float32 and float64 only: in float16/bfloat16 its input gradients differ from torch's by more than torch's own
    # module tests allow (tests/nn/test_module_db.py: up to 4e-4 where torch's fp16 tolerance is 1e-5 + 1e-3 rel), so
    # those keep the contiguous copy. The kernel is the more accurate of the two there (max input-gradient error
    # against float64 on (4, 6, 2, 3) inputs: 8e-4 vs ATen's 1.8e-3 in fp16, 3.8e-3 vs 1.5e-2 in bf16); matching
    # torch would mean reproducing ATen's own rounding.
    full = input.dtype in (torch.float32, torch.float64)
    kernel = _kernel_for(input, weight, bias) if full else None
    if kernel is None:
        return None
    out: Tensor = _ChannelsLastGroupNorm.apply(input, weight, bias, eps, num_groups, kernel)
    return out
