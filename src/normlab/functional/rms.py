"""RMSNorm's functional form: :func:`rms_norm`, its casting modes (:data:`CASTING_MODES`) and the CPU autograd
Function :class:`_RMSNorm`, which runs the fused kernel of ``csrc/rms_norm.cpp`` (:mod:`normlab.functional._kernels`)
or its pure-ATen fallback. Re-exported from :mod:`normlab.functional`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from . import _kernels

_RMS_FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _rms_normalize(rows: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(x * rstd, rstd)`` for the ``(R, K)`` matrix ``rows``, ``rstd = 1 / sqrt(mean(x^2) + eps)`` per row in at
    least float32, ``x * rstd`` rounded once to the input's dtype.

    The mean square takes one fused ATen reduction: ``vector_norm`` (in float32 for fp16/bf16), or for fp16/bf16
    rows of 256 values or more, where that upcast is slower, BatchNorm's statistics kernel over the rows as
    channels, ``var + mean^2`` (no cancellation: both are non-negative), in float32. The normalize is ATen's
    eval-mode BatchNorm kernel over the rows as channels with running variance ``mean(x^2)``: one vectorized pass,
    also in fp16/bf16.
    """
    count, size = rows.shape
    as_channels = rows.view(1, count, size)
    if rows.dtype in (torch.float32, torch.float64) or size < 256:
        acc = torch.float64 if rows.dtype == torch.float64 else torch.float32
        mean_square = torch.linalg.vector_norm(rows, 2, -1, dtype=acc).square_().div_(size)
    else:  # float32 buffers pick ATen's mixed-type kernel (float32 statistics); momentum 0 leaves them alone
        scratch = torch.empty((2, count), dtype=torch.float32, device=rows.device)
        mean, var = torch.batch_norm_update_stats(as_channels, scratch[0], scratch[1], 0.0)
        mean_square = torch.addcmul(var, mean, mean)
    zeros = torch.zeros_like(mean_square)
    normalized = torch.native_batch_norm(as_channels, None, None, zeros, mean_square, False, 0.0, eps)[0]
    return normalized.view(count, size), mean_square.add_(eps).rsqrt_()


def _is_plain(t: Tensor) -> bool:
    """Whether ``t`` is a plain tensor with storage, as a compiled kernel needs: not a subclass, and not wrapped by
    vmap (gradcheck's batched-gradient check runs the backward under vmap) or another functorch transform."""
    functorch = torch._C._functorch
    return type(t) is Tensor and not (functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t))


class _RMSNorm(torch.autograd.Function):
    r"""RMSNorm on CPU, forward and backward each one fused pass over the rows (torch's CPU ``rms_norm`` is a
    composite of several passes, each way).

    .. math:: \mathrm{rstd} = 1/\sqrt{\tfrac1K\textstyle\sum_k x_k^2 + \epsilon}, \qquad
              y = \mathrm{round}(x\,\mathrm{rstd})\,w

    per row of K values, ``rstd`` in float32 (float64 for float64), ``x * rstd`` rounded once to the input's dtype
    then times the weight (torch's rounding). It runs normlab's compiled kernel
    (:func:`normlab.functional._kernels.rms_norm_kernel`, ``csrc/rms_norm.cpp``: the formulas below, accumulated in
    float32 for fp16/bf16, ``dw`` summed per thread's block of rows then over the blocks, deterministic for a fixed
    thread count); when that is disabled (``NORMLAB_NO_KERNELS=1``) or could not be compiled, the pure-ATen path:

    Forward (:func:`_rms_normalize`): one reduction for ``rstd`` per row, one pass for ``x * rstd``, one for the
    weight (torch's rounding: ``x * rstd`` to the input's dtype, then times the weight). Backward, with
    :math:`\hat x = x\,\mathrm{rstd}` and :math:`g = dy\,w` over the K normalized values of a row:

    .. math:: dx = \mathrm{rstd}\,\Big(g - \hat x\,\tfrac1K\textstyle\sum_k g_k\hat x_k\Big), \qquad
              dw = \textstyle\sum_{rows} dy\,\hat x

    which is ATen's fused LayerNorm backward given a zero mean and this ``rstd`` (the same formula, and the same
    ``dw``) less its centering term :math:`-\mathrm{rstd}\,\frac1K\sum_k g_k`, added back per row from one
    matrix-vector product ``dy @ w``. Saved: the input, the weight and ``rstd`` (float32, float64 for float64).
    A second derivative (``create_graph=True``) differentiates torch's composite instead.
    """

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor | None, eps: float, shape: tuple[int, ...]) -> Tensor:
        size = math.prod(shape)
        rows, w = input.reshape(-1, size), None if weight is None else weight.reshape(size)
        kernel = _kernels.rms_norm_kernel()
        if kernel is not None:
            out, rstd = kernel.forward(rows, w, eps)
        else:
            normalized, rstd = _rms_normalize(rows, eps)
            out = normalized if w is None else normalized.mul_(w)
        ctx.save_for_backward(input, weight, rstd)
        ctx.eps, ctx.shape, ctx.kernel = eps, shape, kernel
        return out.view(input.shape)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: autograd's own graph of the composite, differentiable again
            wanted = [t for t, need in zip((input, weight), ctx.needs_input_grad[:2], strict=True) if need]
            with torch.enable_grad():
                out = F.rms_norm(input, ctx.shape, weight, ctx.eps)
            grads = iter(torch.autograd.grad(out, wanted, grad_output, create_graph=True))
            return tuple(next(grads) if need else None for need in ctx.needs_input_grad[:2]) + (None, None)
        size = math.prod(ctx.shape)
        rows, dy = input.reshape(-1, size), grad_output.reshape(-1, size)
        if ctx.kernel is not None and _is_plain(grad_output):
            need_input, need_weight = ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1]
            w = None if weight is None else weight.reshape(size)
            grad_input, grad_weight = ctx.kernel.backward(dy, rows, rstd, w, need_input, need_weight)
            return (
                None if grad_input is None else grad_input.view(input.shape),
                None if grad_weight is None else grad_weight.view(weight.shape),
                None,
                None,
            )
        count, low = rows.shape[0], input.dtype in (torch.float16, torch.bfloat16)
        w = None if weight is None else weight.reshape(size)
        if low and size < 256:  # short rows: float32 copies are cheap, and the centering term below (up to
            # rstd * |dy * w|, which LayerNorm's kernel has already rounded into dx) is not small against dx
            rows, dy, w, low = rows.float(), dy.float(), None if w is None else w.float(), False
        # ATen's mixed-type LayerNorm backward (fp16/bf16 input, float32 weight and statistics) keeps rstd in float32
        w_aten = w.float() if low and w is not None else torch.ones(size, device=rows.device) if low else w
        need_weight = w is not None and ctx.needs_input_grad[1]
        grad_input, grad_weight, _ = torch.ops.aten.native_layer_norm_backward(
            dy,
            rows,
            [size],
            torch.zeros_like(rstd).view(count, 1),
            rstd.view(count, 1),
            w_aten,
            None,
            [ctx.needs_input_grad[0], need_weight, False],
        )
        if grad_input is not None:  # the centering term LayerNorm subtracts: rstd * mean(dy * w) per row
            row_sums = dy.sum(-1) if w is None else torch.mv(dy, w)
            grad_input.add_(row_sums.to(rstd.dtype).mul_(rstd).div_(size).to(grad_input.dtype).view(count, 1))
            grad_input = grad_input.to(input.dtype).view(input.shape)
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype).view(weight.shape)
        return grad_input, grad_weight, None, None


CASTING_MODES = ("none", "llama", "gemma", "t5")
"""RMSNorm precision policies (the order of casts around the fp32 statistics), as Liger-Kernel names them:

- ``none``: ``torch.nn.functional.rms_norm`` (statistics in at least float32, one rounding to the input dtype).
- ``llama``: ``x`` to float32, normalize, cast to the input dtype, then times the weight (Llama, Mistral, Qwen2/3).
- ``gemma``: ``x`` and the weight in float32, normalize and scale, cast to the input dtype last (Gemma).
- ``t5``: float32 mean square; ``x`` (input dtype) times the float32 rsqrt; cast to the weight's dtype when it is
  fp16/bf16; then times the weight (T5).
"""


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    weight_offset: float = 0.0,
    casting_mode: str = "none",
) -> Tensor:
    r"""Root Mean Square Layer Normalization (Zhang & Sennrich 2019), as ``torch.nn.functional.rms_norm``.

    .. math:: y = \frac{x}{\sqrt{\frac{1}{K}\sum_{k} x_k^2 + \epsilon}}\,(\delta + \gamma)

    over the K values of the trailing ``normalized_shape`` dims; ``eps=None`` means torch's default, the epsilon of
    the dtype the statistics are computed in (``casting_mode='none'``: float32 for fp16/bf16 input; the other modes:
    ``torch.finfo(input.dtype).eps``).
    :math:`\delta` is ``weight_offset`` (0; Gemma stores the weight as :math:`\gamma - 1` and uses 1).
    ``casting_mode`` (see :data:`CASTING_MODES`) picks the order of casts of a model family, so a converted model
    computes what the original does, bit for bit in float32 and within rounding in bf16.
    Shapes: input ``(*, *normalized_shape)``; weight ``normalized_shape``; output like input.
    """
    fn = "rms_norm"
    _checks.check_floating(fn, input)
    _checks.check_eps(fn, eps, allow_none=True)
    shape = _checks.as_shape(fn, normalized_shape)
    _checks.check_trailing(fn, input, shape, weight=weight)
    if casting_mode not in CASTING_MODES:
        raise ValueError(f"{fn}: casting_mode must be one of {', '.join(CASTING_MODES)}, got {casting_mode!r}")
    return _rms_norm(input, shape, weight, eps, weight_offset, casting_mode)


def _rms_norm(
    input: Tensor,
    shape: tuple[int, ...],
    weight: Tensor | None,
    eps: float | None,
    weight_offset: float = 0.0,
    casting_mode: str = "none",
) -> Tensor:
    """:func:`rms_norm` on checked arguments (``shape`` a tuple)."""
    if casting_mode == "none":
        if weight is not None and weight_offset:
            weight = weight + weight_offset
        if (
            input.is_cpu
            and type(input) is Tensor
            and input.numel() > 0
            and input.dtype in _RMS_FAST_DTYPES
            and input.is_contiguous()  # else torch's composite, which keeps the input's layout
            and (weight is None or weight.dtype == input.dtype)
            and not torch.compiler.is_compiling()
        ):
            if eps is None:  # torch's default: the epsilon of the dtype the statistics are computed in
                eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
            return _RMSNorm.apply(input, weight, eps, shape)
        return F.rms_norm(input, shape, weight, eps)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    dims = tuple(range(-len(shape), 0))
    x32 = input.float()
    rstd = torch.rsqrt(x32.pow(2).mean(dims, keepdim=True) + eps)
    if casting_mode == "llama":
        out = (x32 * rstd).to(input.dtype)
        return out if weight is None else (weight + weight_offset if weight_offset else weight) * out
    if casting_mode == "gemma":
        out = x32 * rstd
        if weight is not None:
            out = out * (weight_offset + weight.float())
        return out.to(input.dtype)
    out = input * rstd  # t5
    if weight is None:
        return out
    if weight.dtype in (torch.float16, torch.bfloat16):
        out = out.to(weight.dtype)
    return (weight + weight_offset if weight_offset else weight) * out
