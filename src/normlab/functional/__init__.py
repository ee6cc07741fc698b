r"""Functional API mirroring ``torch.nn.functional``: same names, signatures and results, with clear errors.

Each function validates its arguments, then runs the fastest path that is exact:

- ATen (``torch.nn.functional``) where it already computes the same thing stably. That is every case on GPU and
  most on CPU, so normlab is never slower than torch there.
- On CPU, ATen's channels_last kernels compute the statistics of ``group_norm`` and training-mode ``batch_norm``
  with plain float32 running sums, which lose digits when :math:`|\mu|\gg\sigma` (measured at mean 1e4, std 1:
  300x relative error for GroupNorm, 3e-3 for BatchNorm).
- CPU channels_last ``instance_norm`` (with the input's statistics), ``group_norm`` and training-mode
  ``batch_norm`` run normlab's compiled kernel (:mod:`normlab.functional.channels_last`, ``csrc/``): exact
  statistics in one pass over the input (two where one would cancel), one for the output, two for the backward,
  in the input's layout. BatchNorm's (``csrc/batch_norm.cpp``) splits the ``(N*spatial, C)`` matrix into blocks
  of rows, whose partial sums are added in float64, so every thread works at any channel count: faster than
  ATen's own channels_last kernel at every size measured, one and two threads.
- Without the kernel (``NORMLAB_NO_KERNELS=1``, no compiler, parameters of another dtype than the input), ATen's
  kernels made exact: ``group_norm`` on the input shifted per group (float32/float64) or a contiguous copy; training
  ``batch_norm`` by ATen's own channels_last kernels (:mod:`normlab.functional._aten_batch_norm`): the statistics
  kernel on a view of the input as short blocks of rows, whose block statistics are combined in float64, then the
  eval-mode normalize and the fused backward given them; small inputs, where Python calls cost more than a pass,
  ATen's training kernel on the input shifted by its first positions' mean per channel. Eval mode is elementwise,
  so ATen's channels_last kernel is used as is.
- ``instance_norm`` returns channels_last for channels_last input (ATen returns a contiguous tensor).

Beyond torch.nn.functional, :mod:`normlab.functional.catalog` holds the other methods' functional forms
(FRN, TLU, EvoNorm, Switchable, DyT, mean-only BN, GRN).

The formulas, with the sets each statistic is taken over, are in :mod:`normlab.reference`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from . import catalog
from . import channels_last as _cl
from ._aten_batch_norm import _centered, _channels_last_batch_norm, _channels_last_format
from .catalog import *  # noqa: F401,F403  (the catalog's functional forms, listed in catalog.__all__)
from .rms import (  # noqa: F401  (RMSNorm's module; the private names for normlab.nn and the tests)
    _RMS_FAST_DTYPES,
    CASTING_MODES,
    _is_plain,
    _rms_norm,
    _rms_normalize,
    _RMSNorm,
    rms_norm,
)

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
    def forward(ctx: Any, input: Tensor, fmt: torch.memory_format) -> Tensor:
        ctx.fmt = fmt
        return input.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.contiguous(memory_format=ctx.fmt), None


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
    check_batch_norm_args("batch_norm", input, running_mean, running_var, weight, bias, training, eps)
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def check_batch_norm_args(
    fn: str,
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
) -> None:
    """:func:`batch_norm`'s argument checks, under the name ``fn`` (the modules run them once per input shape)."""
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


def _batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """:func:`batch_norm` on checked arguments."""
    if training and input.is_cpu:
        out = _cl.batch_norm(input, running_mean, running_var, weight, bias, momentum, eps)  # the kernel, first
        if out is not None:
            return out
        if not input.is_contiguous() and _channels_last_format(input) is not None and input.numel() > 0:
            return _channels_last_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps)
    if type(input) is Tensor:  # F.batch_norm's own check (one value per channel in training) has been made
        cudnn = input.is_cuda and torch.backends.cudnn.enabled
        return torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


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
    return _layer_norm(input, shape, weight, bias, eps)


def _layer_norm(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """:func:`layer_norm` on checked arguments (``shape`` a tuple): ATen's kernel, without F's Python."""
    if type(input) is Tensor:
        return torch.layer_norm(input, shape, weight, bias, eps, input.is_cuda and torch.backends.cudnn.enabled)
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
    check_group_norm_args("group_norm", input, num_groups, weight, bias, eps)
    return _group_norm(input, num_groups, weight, bias, eps)


def check_group_norm_args(
    fn: str, input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> None:
    """:func:`group_norm`'s argument checks, under the name ``fn`` (the module runs them once per input shape)."""
    _checks.check_floating(fn, input)
    _checks.check_eps(fn, eps)
    _checks.check_min_dim(fn, input, 2, "(N, C, *)")
    channels = input.shape[1]
    _checks.check_groups(fn, num_groups, channels)
    _checks.check_per_channel(fn, channels, weight=weight, bias=bias)
    if input.numel() == num_groups:  # F.group_norm's own check: one value in all (N * C/G * spatial == 1)
        raise ValueError(
            f"{fn}: expected more than 1 value per channel when training, got input of shape {tuple(input.shape)} "
            f"with num_groups={num_groups}"
        )


def _group_norm(input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """:func:`group_norm` on checked arguments.

    CPU channels_last: normlab's compiled kernel (:func:`normlab.functional.channels_last.group_norm`); without it,
    float32/float64 through ATen's channels_last kernel on the input shifted per (example, group)
    (:func:`_group_shift`), fp16/bf16 on a contiguous copy, where ATen's kernel is several times faster than its
    channels_last one."""
    if input.is_cpu and not input.is_contiguous():
        fmt = _channels_last_format(input)
        if fmt is not None:
            out = _cl.group_norm(input, num_groups, weight, bias, eps)
            if out is not None:
                return out
        if fmt is not None and input.dtype in (torch.float32, torch.float64) and type(input) is Tensor:
            shift = _group_shift(input, num_groups)
            x = input if shift is None else input - shift
            return torch.group_norm(x, num_groups, weight, bias, eps, False)
        if fmt is not None:
            x = _Contiguous.apply(input, fmt)
            return F.group_norm(x, num_groups, weight, bias, eps).contiguous(memory_format=fmt)
    if type(input) is Tensor:
        return torch.group_norm(input, num_groups, weight, bias, eps, input.is_cuda and torch.backends.cudnn.enabled)
    return F.group_norm(input, num_groups, weight, bias, eps)


_GROUP_SHIFT_POSITIONS = 8
"""The positions whose values per (example, group) decide, and whose mean shifts the input, in
:func:`_group_shift`: 8 x C/G values, a mean within a fraction of a standard deviation, for a few dozen us."""


def _group_shift(input: Tensor, num_groups: int) -> Tensor | None:
    """For channels_last ``input``: None when its first :data:`_GROUP_SHIFT_POSITIONS` positions are centered in every
    (example, group) (``|mean| <= 2 std``), else the mean of those positions per (example, group), shaped
    ``(N, C, 1, ...)`` (each channel its group's), detached.

    ATen's channels_last GroupNorm sums ``x`` and ``x^2`` in one pass: at mean 1e4, std 1, its output is off by
    300x the float32 tolerance. GroupNorm's output and gradients do not depend on a constant per (example, group),
    so the kernel runs on ``input - shift``, whose values are within a few std of 0: one elementwise pass more, and
    none on input that is centered already."""
    n, c = input.shape[:2]
    positions, per_group = min(input.numel() // max(1, n * c), _GROUP_SHIFT_POSITIONS), c // num_groups
    first = input.detach().as_strided((n, positions, num_groups, per_group), (input.stride(0), c, per_group, 1))
    values = first.transpose(1, 2).reshape(n, num_groups, positions * per_group)  # one small copy
    mean = values.mean(2)
    var = (values - mean.unsqueeze(2)).square_().mean(2)  # two passes: exact at any mean
    if _centered(mean, var):
        return None
    return mean.repeat_interleave(per_group, dim=1).view((n, c) + (1,) * (input.dim() - 2))


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
    check_instance_norm_args("instance_norm", input, running_mean, running_var, weight, bias, use_input_stats, eps)
    return _instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def check_instance_norm_args(
    fn: str,
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
    eps: float,
) -> None:
    """:func:`instance_norm`'s argument checks, under the name ``fn`` (the modules run them once per input shape)."""
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


def _instance_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """:func:`instance_norm` on checked arguments; channels_last input gives channels_last output."""
    if use_input_stats and _channels_last_format(input) is not None and input.is_cpu:
        out = _cl.instance_norm(input, running_mean, running_var, weight, bias, momentum, eps)
        if out is not None:
            return out
    if type(input) is Tensor:
        cudnn = input.is_cuda and torch.backends.cudnn.enabled
        out = torch.instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn)
    else:
        out = F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    return out if input.is_contiguous() else _restore_format(out, _channels_last_format(input))


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
        raise ValueError(
            f"{fn}: dim must be None or in [{-v.dim()}, {v.dim() - 1}] for a {v.dim()}-d weight, got {dim}"
        )
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

    .. math:: y_{o} = \cos\theta_o
              = \frac{w_o\cdot x}{\max(\lVert w_o\rVert,\epsilon)\,\max(\lVert x\rVert,\epsilon)}\in[-1,1]

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
            f"{fn}: input's last dim must equal in_features ({weight.shape[1]}), "
            f"got input of shape {tuple(input.shape)}"
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
    zero, so :math:`w_c\cdot(x_p-\bar x_p) = w_c\cdot x_p` and
    :math:`\lVert x_p-\bar x_p\rVert^2 = \sum x_p^2 - (\sum x_p)^2/K`.
    Shapes: input ``(N, C_in, *spatial)``; weight ``(C_out, C_in/groups, *kernel)``;
    output ``(N, C_out, *spatial_out)``.
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
