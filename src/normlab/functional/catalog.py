r"""Functional forms of the methods beyond ``torch.nn.functional``: FRN + TLU, EvoNorm-B0/S0, Switchable
Normalization, DyT, mean-only BatchNorm and Global Response Normalization.

Each takes its parameters and buffers as arguments, as ``torch.nn.functional.batch_norm`` does, so the modules in
:mod:`normlab.nn` are thin wrappers and a user can call the math on their own tensors. Inputs are channels-first
``(N, C, *spatial)`` (DyT also takes trailing-feature inputs). Formulas and analytic backwards in
:mod:`normlab.reference.response` and :mod:`normlab.reference.batch_variants`.

Running buffers (``running_var`` and the like) are updated in place when ``training`` is True, like torch's
``batch_norm``; each update uses the unbiased variance, as torch's BatchNorm does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks

__all__ = [
    "filter_response_norm",
    "tlu",
    "evonorm_b0",
    "evonorm_s0",
    "switchable_norm",
    "dynamic_tanh",
    "mean_only_batch_norm",
    "global_response_norm",
]


def _per_channel(input: Tensor) -> tuple[int, ...]:
    """The view that broadcasts a ``(C,)`` tensor over ``(N, C, *spatial)``."""
    return (1, -1) + (1,) * (input.dim() - 2)


def _check_maps(fn: str, input: Tensor, **per_channel: Tensor | None) -> None:
    """A channels-first feature map with at least one spatial dim, and parameters of one value per channel."""
    _checks.check_floating(fn, input)
    if input.dim() < 3:
        raise ValueError(
            f"{fn}: expected input of shape (N, C, *spatial) with at least one spatial dim, got shape "
            f"{tuple(input.shape)}; it normalizes each channel over its spatial positions"
        )
    _checks.check_per_channel(fn, input.shape[1], **per_channel)


def _check_training_batch(fn: str, input: Tensor) -> None:
    if input.numel() == input.shape[1]:
        raise ValueError(
            f"{fn}: expected more than 1 value per channel when training, got input of shape {tuple(input.shape)}"
        )


def _update_running(buffer: Tensor | None, batch_value: Tensor, count: int, momentum: float, unbiased: bool) -> None:
    if buffer is None:
        return
    with torch.no_grad():
        value = batch_value.detach().to(buffer.dtype)
        if unbiased:
            value = value * count / max(count - 1, 1)
        buffer.lerp_(value, momentum)


def tlu(input: Tensor, tau: Tensor) -> Tensor:
    r"""Thresholded Linear Unit: :math:`\max(x, \tau_c)`, ``tau`` one value per channel of ``(N, C, *)``."""
    _checks.check_floating("tlu", input)
    _checks.check_min_dim("tlu", input, 2, "(N, C, *)")
    _checks.check_per_channel("tlu", input.shape[1], tau=tau)
    return torch.maximum(input, tau.view(_per_channel(input)))


def filter_response_norm(
    input: Tensor, weight: Tensor, bias: Tensor, tau: Tensor | None = None, eps: float | Tensor = 1e-6
) -> Tensor:
    r""":math:`y = \max(\gamma\,x/\sqrt{\overline{x^2}+|\epsilon|}+\beta,\ \tau)`, the mean square per
    (example, channel) over spatial positions; no TLU when ``tau`` is None. ``eps`` may be a per-channel tensor
    (learnable epsilon; its absolute value is used)."""
    fn = "filter_response_norm"
    _check_maps(fn, input, weight=weight, bias=bias, tau=tau)
    shape = _per_channel(input)
    if isinstance(eps, Tensor):
        _checks.check_per_channel(fn, input.shape[1], eps=eps)
        eps = eps.abs().view(shape)
    else:
        _checks.check_eps(fn, eps)
    nu2 = input.square().mean(dim=tuple(range(2, input.dim())), keepdim=True)
    out = input * torch.rsqrt(nu2 + eps) * weight.view(shape) + bias.view(shape)
    return out if tau is None else torch.maximum(out, tau.view(shape))


def evonorm_b0(
    input: Tensor,
    running_var: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    v1: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r""":math:`y = \gamma\,x/\max(\sqrt{\sigma^2_B+\epsilon},\ v_1x+\sqrt{\sigma^2_I+\epsilon})+\beta`: the batch
    variance per channel in training (``running_var`` updated), ``running_var`` in eval; the instance variance per
    (example, channel) over spatial positions."""
    fn = "evonorm_b0"
    _check_maps(fn, input, running_var=running_var, weight=weight, bias=bias, v1=v1)
    _checks.check_eps(fn, eps)
    shape = _per_channel(input)
    if training:
        _check_training_batch(fn, input)
        var = input.var(dim=(0,) + tuple(range(2, input.dim())), correction=0)
        _update_running(running_var, var, input.numel() // input.shape[1], momentum, unbiased=True)
    elif running_var is None:
        raise ValueError(f"{fn}: running_var is required in eval (training=False)")
    else:
        var = running_var
    inst = input.var(dim=tuple(range(2, input.dim())), correction=0, keepdim=True)
    den = torch.maximum((var.view(shape) + eps).sqrt(), v1.view(shape) * input + (inst + eps).sqrt())
    return input / den * weight.view(shape) + bias.view(shape)


def evonorm_s0(input: Tensor, num_groups: int, weight: Tensor, bias: Tensor, v1: Tensor, eps: float = 1e-5) -> Tensor:
    r""":math:`y = \gamma\,x\,\mathrm{sigmoid}(v_1x)/\sqrt{\sigma^2_G+\epsilon}+\beta`, the variance per
    (example, group of ``C / num_groups`` channels) over those channels and spatial positions."""
    fn = "evonorm_s0"
    _check_maps(fn, input, weight=weight, bias=bias, v1=v1)
    _checks.check_groups(fn, num_groups, input.shape[1])
    _checks.check_eps(fn, eps)
    shape = _per_channel(input)
    grouped = input.reshape(input.shape[0], num_groups, -1)
    std = (grouped.var(dim=2, correction=0, keepdim=True) + eps).sqrt().expand_as(grouped).reshape(input.shape)
    return input * torch.sigmoid(v1.view(shape) * input) / std * weight.view(shape) + bias.view(shape)


def switchable_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_weight: Tensor,
    var_weight: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Switchable Normalization: :math:`y = \gamma\,(x-\mu)/\sqrt{\sigma^2+\epsilon}+\beta` with
    :math:`\mu = \sum_k w_k\mu_k`, :math:`\sigma^2 = \sum_k w'_k\sigma^2_k` over k in (IN, LN, BN),
    :math:`w = \mathrm{softmax}` of ``mean_weight``, :math:`w'` of ``var_weight`` (3 logits each). BN's part uses
    the batch in training (running buffers updated) and the running buffers in eval."""
    fn = "switchable_norm"
    _check_maps(fn, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    _checks.check_eps(fn, eps)
    for name, logits in (("mean_weight", mean_weight), ("var_weight", var_weight)):
        if logits.numel() != 3:
            raise ValueError(f"{fn}: {name} must hold 3 logits (IN, LN, BN), got shape {tuple(logits.shape)}")
    n, c = input.shape[:2]
    v = input.reshape(n, c, -1)
    var_in, mean_in = torch.var_mean(v, dim=2, correction=0, keepdim=True)
    # LN's and BN's variances from IN's by the law of total variance (equal group sizes): the mean of the
    # variances plus the variance of the means. E[x²] - E[x]² would cancel (NaN at mean 1e4, std 1, measured).
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
    if training:
        _check_training_batch(fn, input)
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = var_in.mean(0, keepdim=True) + (mean_in - mean_bn).square().mean(0, keepdim=True)
        _update_running(running_mean, mean_bn.flatten(), 1, momentum, unbiased=False)
        _update_running(running_var, var_bn.flatten(), n * v.shape[2], momentum, unbiased=True)
    elif running_mean is None or running_var is None:
        raise ValueError(f"{fn}: running_mean and running_var are required in eval (training=False)")
    else:
        mean_bn, var_bn = running_mean.view(1, c, 1), running_var.view(1, c, 1)
    wm, wv = torch.softmax(mean_weight, 0), torch.softmax(var_weight, 0)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    out = ((v - mean) * torch.rsqrt(var + eps)).reshape(input.shape)
    if weight is not None:
        out = out * weight.view(_per_channel(input))
    if bias is not None:
        out = out + bias.view(_per_channel(input))
    return out


def dynamic_tanh(input: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor, channels_last: bool = True) -> Tensor:
    r"""DyT: :math:`y = \gamma\tanh(\alpha x)+\beta`, ``alpha`` a scalar. With ``channels_last`` (default) weight
    and bias act on the trailing dims (their shape); else they are ``(C,)`` and act on dim 1 of ``(N, C, *)``."""
    fn = "dynamic_tanh"
    _checks.check_floating(fn, input)
    if channels_last:
        _checks.check_trailing(fn, input, tuple(weight.shape), bias=bias)
    else:
        _checks.check_min_dim(fn, input, 2, "(N, C, *)")
        _checks.check_per_channel(fn, input.shape[1], weight=weight, bias=bias)
        weight, bias = weight.view(_per_channel(input)), bias.view(_per_channel(input))
    return torch.tanh(alpha * input) * weight + bias


def mean_only_batch_norm(
    input: Tensor, running_mean: Tensor | None, bias: Tensor | None, training: bool = False, momentum: float = 0.1
) -> Tensor:
    r"""Mean-only BatchNorm: :math:`y = x - \mu_c + \beta_c`, the batch mean per channel over N and spatial
    positions in training (``running_mean`` updated), ``running_mean`` in eval; no division by a deviation."""
    fn = "mean_only_batch_norm"
    _checks.check_floating(fn, input)
    _checks.check_min_dim(fn, input, 2, "(N, C, *)")
    _checks.check_per_channel(fn, input.shape[1], running_mean=running_mean, bias=bias)
    shape = _per_channel(input)
    if training:
        mean = input.mean(dim=(0,) + tuple(range(2, input.dim())))
        _update_running(running_mean, mean, 1, momentum, unbiased=False)
    elif running_mean is None:
        raise ValueError(f"{fn}: running_mean is required in eval (training=False)")
    else:
        mean = running_mean
    out = input - mean.view(shape)
    return out if bias is None else out + bias.view(shape)


def global_response_norm(input: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Global Response Normalization (ConvNeXt V2):
    :math:`G_{nc} = \lVert x_{nc\cdot}\rVert_2` over spatial positions,
    :math:`N_{nc} = G_{nc}/(\frac{1}{C}\sum_{c'}G_{nc'}+\epsilon)`, :math:`y = \gamma_c\,x\,N_{nc} + \beta_c + x`."""
    fn = "global_response_norm"
    _check_maps(fn, input, weight=weight, bias=bias)
    _checks.check_eps(fn, eps)
    shape = _per_channel(input)
    # torch.linalg.vector_norm rescales internally, so the squares do not overflow in fp16 for large inputs.
    g = torch.linalg.vector_norm(input, 2, dim=tuple(range(2, input.dim())), keepdim=True)
    nx = g / (g.mean(dim=1, keepdim=True) + eps)
    return input * (1 + weight.view(shape) * nx) + bias.view(shape)
