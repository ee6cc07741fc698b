r"""Functional API mirroring ``torch.nn.functional``: same names, signatures and results, with clear errors.

Each function validates its arguments, then runs the fastest path that is exact:

- ATen (``torch.nn.functional``) where it already computes the same thing stably. That is every case on GPU and
  most on CPU, so normlab is never slower than torch there.
- On CPU, ATen's channels_last kernels compute the statistics of ``group_norm`` and training-mode ``batch_norm``
  with plain float32 running sums, which lose digits when :math:`|\mu|\gg\sigma` (measured at mean 1e4, std 1:
  300x relative error for GroupNorm, 3e-3 for BatchNorm). ``group_norm`` runs on a contiguous copy, and the result
  is returned in channels_last again. Training-mode ``batch_norm`` takes its statistics in two passes (mean, then
  centered values) on the channels_last tensor itself, normalizes the centered values with one ATen elementwise
  pass, and runs ATen's fused channels_last backward: exact, no copy of the input, the layout kept
  (:class:`_ChannelsLastBatchNorm`). Eval mode is elementwise, so ATen's channels_last kernel is used as is.
- ``instance_norm`` returns channels_last for channels_last input (ATen returns a contiguous tensor).

Beyond torch.nn.functional, :mod:`normlab.functional.catalog` holds the other methods' functional forms
(FRN, TLU, EvoNorm, Switchable, DyT, mean-only BN, GRN).

The formulas, with the sets each statistic is taken over, are in :mod:`normlab.reference`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from . import catalog
from .catalog import *  # noqa: F401,F403  (the catalog's functional forms, listed in catalog.__all__)

__all__ = [
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "weight_norm",
    "cosine_linear",
    "cosine_conv",
] + catalog.__all__


def _channels_last_format(input: Tensor) -> torch.memory_format | None:
    """The channels_last format ``input`` is laid out in, or None if it is plain contiguous (or neither)."""
    if input.is_contiguous():
        return None
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _channel_moments(input: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over (N, *spatial), outside autograd.

    Two-pass (mean, then centered squares): exact at large means, accumulated in at least float32 as ATen does for
    half inputs, and on CPU several times faster than ``torch.var_mean``'s Welford loop.
    """
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.detach()
    dims, shape = (0,) + tuple(range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dim=dims, dtype=acc)
    return mean, (x - mean.view(shape)).square_().mean(dim=dims)


def _restore_format(output: Tensor, fmt: torch.memory_format | None) -> Tensor:
    return output if fmt is None else output.contiguous(memory_format=fmt)


class _Contiguous(torch.autograd.Function):
    """``input.contiguous()`` whose backward hands the gradient back in the input's layout ``fmt``: the exact
    contiguous computation stays an implementation detail, and the caller gets a channels_last input gradient
    for a channels_last input, as from torch's own kernel."""

    @staticmethod
    def forward(ctx, input: Tensor, fmt: torch.memory_format) -> Tensor:  # type: ignore[override]
        ctx.fmt = fmt
        return input.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.contiguous(memory_format=ctx.fmt), None


def _unstable_on_channels_last(input: Tensor) -> torch.memory_format | None:
    return _channels_last_format(input) if input.device.type == "cpu" else None


def _fused_channels_last_ok(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Whether ATen's channels_last kernels take float32 (float64 for float64) statistics with these tensors:
    parameters of the input's dtype for float32/float64 input, float32 or no parameters for half/bfloat16 input
    (ATen's mixed-type path). Otherwise (and for an empty batch) the contiguous copy runs."""
    if input.numel() == 0:
        return False
    stats = torch.float64 if input.dtype == torch.float64 else torch.float32
    if input.dtype not in (stats, torch.float16, torch.bfloat16):
        return False
    return all(p is None or p.dtype == stats for p in (weight, bias))


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm on CPU channels_last input: exact, in the input's layout, without copying the input.

    Statistics in two passes over the tensor as laid out. First the mean ``m`` (a float32 cascade reduction, as in
    :func:`_channel_moments`), then the centered values ``d = x - m`` (the one full temporary, later the output).
    Their sum and sum of squares come from one fused ATen pass (the eval-mode BatchNorm backward with
    ``dy = d``, zero mean and unit variance: ``dbeta = sum(d)``, ``dgamma = sum(d * d)``); ``sum(d) / n`` corrects
    ``m`` to within half an ulp, the mean of ATen's float64-accumulated contiguous kernel. The sums of squares of
    centered values are accumulated in float32 as in ATen's own channels_last kernel (about 1e-5 relative at 25k
    values per channel): there is no cancellation. The output is ``d * a + (beta - s * a)`` with
    ``a = gamma * invstd``, written over ``d``: from the centered values, so exact at large means too. The
    backward is ATen's fused channels_last training-mode backward given the saved (float32) mean and invstd, with
    ``dgamma`` corrected for the saved mean's rounding (``- invstd * (mean - saved_mean) * dbeta``); it is
    differentiable itself (ATen's double backward treats the saved statistics as functions of the input), so
    second derivatives work. The running buffers are updated as ATen does: ``r <- (1 - momentum) * r +
    momentum * s`` in float64, with the unbiased variance.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, momentum, eps):  # type: ignore[override]
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        channels, shape = input.shape[1], (1, -1) + (1,) * (input.dim() - 2)
        first = input.mean(dim=(0,) + tuple(range(2, input.dim())), dtype=acc)
        centered = input - first.view(shape)  # in acc, channels_last
        zeros, ones = first.new_zeros(channels), first.new_ones(channels)
        _, sum_squares, sums = torch.ops.aten.native_batch_norm_backward(
            centered, centered, None, zeros, ones, None, None, False, 0.0, [False, True, True]
        )
        count = input.numel() // channels
        shift = sums.double() / count
        var = sum_squares.double() / count - shift * shift
        mean = first.double() + shift
        for buffer, value in ((running_mean, mean), (running_var, var * count / (count - 1))):
            if buffer is not None:
                buffer.copy_(buffer.double().mul_(1 - momentum).add_(value, alpha=momentum))
        invstd = (var + eps).rsqrt()
        scale = invstd if weight is None else invstd * weight.double()
        offset = -shift * scale if bias is None else bias.double() - shift * scale
        offset, scale = offset.to(acc).view(shape), scale.to(acc).view(shape)
        if torch.compiler.is_compiling():  # out= breaks the graph; inductor fuses the out-of-place form anyway
            out = torch.addcmul(offset, centered, scale)
        else:
            out = torch.addcmul(offset, centered, scale, out=centered)
        saved_mean = mean.to(acc)
        ctx.save_for_backward(input, weight, saved_mean, invstd.to(acc), (mean - saved_mean.double()).to(acc))
        ctx.eps = eps
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        input, weight, mean, invstd, residual = ctx.saved_tensors
        # ATen's fused channels_last backward runs only when dy shares the input's layout; any other (the expanded
        # gradient of a .sum(), say) takes its generic path, several times slower than this copy.
        grad_output = grad_output.contiguous(memory_format=_channels_last_format(input))
        need_weight = weight is not None and ctx.needs_input_grad[1]
        mask = [ctx.needs_input_grad[0], need_weight, ctx.needs_input_grad[2] or need_weight]
        grad_input, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_output, input, weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        if need_weight:  # sum(dy * (x - mean)) * invstd for the exact mean: the saved one is off by the residual
            grad_weight = grad_weight - invstd * residual * grad_bias
        return grad_input, grad_weight, grad_bias if ctx.needs_input_grad[2] else None, None, None, None, None


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch Normalization (Ioffe & Szegedy 2015), as ``torch.nn.functional.batch_norm``.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}\,\gamma + \beta

    Statistics per channel over S_i = the batch and spatial axes. In training the batch statistics normalize and,
    when running buffers are given, update them in place: ``r = (1 - momentum) * r + momentum * s`` with the
    unbiased variance. Otherwise the running statistics normalize.

    Shapes: input ``(N, C, *)``; running_mean, running_var, weight, bias ``(C,)``; output like input.
    """
    fn = "batch_norm"
    _checks.check_floating(fn, input)
    _checks.check_batch_norm_eps(fn, eps, training)
    _checks.check_min_dim(fn, input, 2, "(N, C, *)")
    channels = input.shape[1]
    _checks.check_per_channel(
        fn, channels, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    if training and channels > 0 and input.numel() == channels:
        raise ValueError(
            f"{fn}: expected more than 1 value per channel when training, got input of shape {tuple(input.shape)}; "
            "batch statistics of a single value are undefined (use eval mode, a larger batch, or GroupNorm/LayerNorm)"
        )
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{fn}: running_mean and running_var are required when training=False")
    fmt = _unstable_on_channels_last(input) if training else None  # eval mode is elementwise: ATen is exact
    if fmt is not None and _fused_channels_last_ok(input, weight, bias):
        return _ChannelsLastBatchNorm.apply(input, weight, bias, running_mean, running_var, momentum, eps)
    x = input if fmt is None else _Contiguous.apply(input, fmt)
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return _restore_format(out, fmt)


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Layer Normalization (Ba et al. 2016), as ``torch.nn.functional.layer_norm``.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}\,\gamma + \beta

    Statistics per row over S_i = the trailing ``normalized_shape`` dims. Shapes: input ``(*, *normalized_shape)``;
    weight, bias ``normalized_shape``; output like input.
    """
    fn = "layer_norm"
    _checks.check_floating(fn, input)
    _checks.check_eps(fn, eps)
    shape = _checks.as_shape(fn, normalized_shape)
    _checks.check_trailing(fn, input, shape, weight=weight, bias=bias)
    return F.layer_norm(input, shape, weight, bias, eps)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group Normalization (Wu & He 2018), as ``torch.nn.functional.group_norm``.

    Statistics per (example, group) over S_i = the C/G channels of the group and all spatial positions; the affine
    parameters are per channel. Shapes: input ``(N, C, *)`` with C divisible by ``num_groups``; weight, bias
    ``(C,)``; output like input (channels_last stays channels_last).
    """
    fn = "group_norm"
    _checks.check_floating(fn, input)
    _checks.check_eps(fn, eps)
    _checks.check_min_dim(fn, input, 2, "(N, C, *)")
    channels = input.shape[1]
    _checks.check_groups(fn, num_groups, channels)
    _checks.check_per_channel(fn, channels, weight=weight, bias=bias)
    fmt = _unstable_on_channels_last(input)
    x = input if fmt is None else _Contiguous.apply(input, fmt)
    return _restore_format(F.group_norm(x, num_groups, weight, bias, eps), fmt)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Instance Normalization (Ulyanov et al. 2016), as ``torch.nn.functional.instance_norm``.

    Statistics per (example, channel) over S_i = the spatial positions. It needs a spatial extent: a vector of
    features per example (an MLP's or RNN's activations) has one value per (n, c), whose variance is zero.
    With running buffers and ``use_input_stats``, they are updated with the batch average of the per-instance
    statistics. Shapes: input ``(N, C, *spatial)``; buffers, weight, bias ``(C,)``; output like input.
    """
    fn = "instance_norm"
    _checks.check_floating(fn, input)
    _checks.check_eps(fn, eps)
    if input.dim() < 3:
        raise ValueError(
            f"{fn}: expected input of shape (N, C, *spatial) with at least one spatial dim, got shape "
            f"{tuple(input.shape)}. InstanceNorm normalizes each channel of each example over its spatial positions; "
            "activations without a spatial extent (MLP, RNN features) have none to normalize over"
        )
    channels = input.shape[1]
    _checks.check_per_channel(
        fn, channels, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    if use_input_stats and input.numel() > 0 and math.prod(input.shape[2:]) == 1:
        raise ValueError(
            f"{fn}: expected more than 1 spatial element when training, got input of shape {tuple(input.shape)}. "
            "InstanceNorm takes each statistic over one channel's spatial positions; with a single position the "
            "variance is 0 and the output carries no information (use LayerNorm or GroupNorm for such inputs)"
        )
    if not use_input_stats and (running_mean is None or running_var is None):
        raise ValueError(f"{fn}: running_mean and running_var are required when use_input_stats=False")
    fmt = _channels_last_format(input)
    out = F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    return _restore_format(out, fmt)


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

    over the K values of the trailing ``normalized_shape`` dims; ``eps=None`` means ``torch.finfo(input.dtype).eps``.
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
    if casting_mode == "none":
        if weight is not None and weight_offset:
            weight = weight + weight_offset
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


def weight_norm(v: Tensor, g: Tensor, dim: int | None = 0) -> Tensor:
    r"""Weight Normalization (Salimans & Kingma 2016): :math:`w = g\,\frac{v}{\lVert v\rVert}`.

    The norm is taken over every dim of ``v`` but ``dim`` (``dim=None``, and ``-1`` as in torch: over the whole
    tensor). Shapes: v any;
    g broadcastable against v with size 1 everywhere but ``dim``; output like v.
    """
    fn = "weight_norm"
    _checks.check_floating(fn, v, "v")
    _checks.check_floating(fn, g, "g")
    dim = _weight_norm_dim(fn, v, dim)
    return torch._weight_norm(v, g, dim)


def _weight_norm_dim(fn: str, v: Tensor, dim: int | None) -> int:
    """torch's convention: ``None`` and ``-1`` both mean one norm over the whole tensor; other negatives wrap."""
    if dim is None or dim == -1:
        return -1
    if not -v.dim() <= dim < max(v.dim(), 1):
        raise ValueError(f"{fn}: dim must be None or in [{-v.dim()}, {v.dim() - 1}] for a {v.dim()}-d weight, got {dim}")
    return dim if dim >= 0 else dim + v.dim()


def _clamped_norm(x: Tensor, dims: Sequence[int], eps: float) -> Tensor:
    """``max(||x||, eps)`` over ``dims``, keeping dims; its gradient is finite everywhere (0 below eps)."""
    return (x * x).sum(dim=tuple(dims), keepdim=True).clamp_min(eps * eps).sqrt()


def _normalized_rows(weight: Tensor, centered: bool, eps: float) -> Tensor:
    dims = tuple(range(1, weight.dim()))
    w = weight - weight.mean(dim=dims, keepdim=True) if centered else weight
    return w / _clamped_norm(w, dims, eps)


def cosine_linear(input: Tensor, weight: Tensor, centered: bool = False, eps: float = 1e-8) -> Tensor:
    r"""Cosine Normalization (Luo et al. 2017) of a linear layer's pre-activation:

    .. math:: y_{o} = \cos\theta_o = \frac{w_o\cdot x}{\max(\lVert w_o\rVert,\epsilon)\,\max(\lVert x\rVert,\epsilon)}\in[-1,1]

    ``centered=True`` centers both vectors first (Pearson correlation). A zero input gives 0, not NaN.
    Shapes: input ``(*, in_features)``; weight ``(out_features, in_features)``; output ``(*, out_features)``.
    """
    fn = "cosine_linear"
    _checks.check_floating(fn, input)
    _checks.check_floating(fn, weight, "weight")
    _checks.check_eps(fn, eps)
    if weight.dim() != 2:
        raise ValueError(f"{fn}: weight must have shape (out_features, in_features), got {tuple(weight.shape)}")
    if input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{fn}: input's last dim must equal in_features ({weight.shape[1]}), got input of shape {tuple(input.shape)}"
        )
    x = input - input.mean(dim=-1, keepdim=True) if centered else input
    x_hat = x / _clamped_norm(x, (-1,), eps)
    return F.linear(x_hat, _normalized_rows(weight, centered, eps))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def cosine_conv(
    input: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    centered: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    r"""Cosine Normalization of a convolution: at every output position, the cosine between the filter and the
    input patch it covers (zero padding counts as part of the patch).

    .. math:: y_{o,p} = \frac{w_o\cdot x_p}{\max(\lVert w_o\rVert,\epsilon)\,\max(\lVert x_p\rVert,\epsilon)}

    The patch norms come from one convolution of :math:`x^2` with a ones kernel. Centered: a centered filter sums to
    zero, so :math:`w_c\cdot(x_p-\bar x_p) = w_c\cdot x_p` and :math:`\lVert x_p-\bar x_p\rVert^2 = \sum x_p^2 - (\sum x_p)^2/K`.
    Shapes: input ``(N, C_in, *spatial)``; weight ``(C_out, C_in/groups, *kernel)``; output ``(N, C_out, *spatial_out)``.
    """
    fn = "cosine_conv"
    _checks.check_floating(fn, input)
    _checks.check_floating(fn, weight, "weight")
    _checks.check_eps(fn, eps)
    spatial = weight.dim() - 2
    if spatial not in _CONV or input.dim() != weight.dim():
        raise ValueError(
            f"{fn}: expected weight (C_out, C_in/groups, *kernel) with 1-3 kernel dims and an input of the same rank, "
            f"got weight {tuple(weight.shape)} and input {tuple(input.shape)}"
        )
    if input.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"{fn}: input has {input.shape[1]} channels, expected {weight.shape[1] * groups} (weight.shape[1] * groups)"
        )
    conv = _CONV[spatial]
    numerator = conv(input, _normalized_rows(weight, centered, eps), None, stride, padding, dilation, groups)
    ones = torch.ones((groups,) + tuple(weight.shape[1:]), dtype=input.dtype, device=input.device)
    patch_sq = conv(input * input, ones, None, stride, padding, dilation, groups)
    if centered:
        patch_sum = conv(input, ones, None, stride, padding, dilation, groups)
        patch_sq = patch_sq - patch_sum * patch_sum / weight[0].numel()
    patch_norm = patch_sq.clamp_min(eps * eps).sqrt()
    group_size = weight.shape[0] // groups
    return numerator / patch_norm.repeat_interleave(group_size, dim=1)
