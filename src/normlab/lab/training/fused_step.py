"""One training step of a packed ConvNet in the matmul form with its backward written out: no autograd graph.

At a small batch a packed step is mostly overhead: at batch 2, 20 nets took 3.2 ms a step of which the products
and the norm kernels were under 1 ms; the rest was the autograd engine, each node's Python and the small ops
between them. Here the forward keeps what its backward reads, and the backward is the chain rule by hand over the
same kernels (``split_forward`` / ``split_backward`` of :mod:`~normlab.lab.training.channel_major_kernel`, ATen's
``bmm``), each layer's gradients computed once, in the order autograd would:

    y_i   = W_i @ taps_i                       (K, C, L_i*N)   taps_0: the first conv's columns
    h_i   = relu(norm_i(y_i + b_i))            written by the kernel as taps_{i+1} (the next conv's input), or,
                                               for the last layer, as (K, C, L*N) maps
    p     = mean over positions of h_last      (K, C, N)
    z     = V @ p + c                          (K, classes, N)
    loss  = mean over N of -log softmax(z)[target]                   one per run
    dz    = (softmax(z) - onehot) / N          (0 for runs that stopped)
    dV    = dz @ p^T,  dc = sum_N dz,  dp = V^T @ dz,  dh_last = dp / L broadcast over positions
    dy_i, db_i, d(norm_i) = split_backward(dh_i),  dW_i = dy_i @ taps_i^T,  dtaps_i = W_i^T @ dy_i  (-> dh_{i-1})

Batch Renorm's weight and bias enter the kernel as ``w * r`` and ``b + w * d`` (r, d without gradient): their
gradients are ``g_w' * r + g_b' * d`` and ``g_b'``. Running statistics are updated as the autograd path does.
It runs where :func:`fused_plan` finds a plan (the packed net takes the matmul form with the kernel's taps: every norm a
kernel case, ReLU or no activation, a plain packed head, no hooks or parametrizations); elsewhere the step is
autograd's. Its gradients equal autograd's up to float rounding (the tests compare them).

Example::

    >>> import torch
    >>> from normlab.lab.training.models import ConvNet
    >>> net = ConvNet(1, 10, 1, norm="group", width=8, depth=3, copies=4)
    >>> x, y = torch.randn(2, 4, 40), torch.randint(0, 10, (2, 4))
    >>> plan = fused_plan(net, x)
    >>> if plan is not None:
    ...     losses, grads = fused_loss_and_grads(net, plan, x, y, torch.ones(4))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .channel_major import (
    RENORM_NORMS,
    KernelLayer,
    hooked,
    kernel_cases,
    kernel_layer,
    layer_parts,
    update_running_stats,
)
from .channel_major_kernel import NO_TABLE, channel_major_kernel
from .conv_forms import first_conv_columns, tap_rows
from .models import TAPS_MIN_BATCH, ConvNet, PackedLinear

__all__ = ["FusedLayer", "fused_plan", "fused_loss_and_grads"]


@dataclass(frozen=True, kw_only=True)
class FusedLayer:
    """A norm layer's part in a fused plan: its parts' kernel cases
    (:func:`~normlab.lab.training.channel_major.kernel_cases`) and, where no part is a Batch Renorm (whose weight
    and bias the kernel takes with that step's r and d), its kernel arguments, the same at every step."""

    cases: list[str]
    fixed: KernelLayer | None


def fused_plan(net: nn.Module, x: Tensor) -> list[FusedLayer] | None:
    """Each norm layer's :class:`FusedLayer` where
    :func:`fused_loss_and_grads` computes ``net``'s step on inputs ``x`` ``(N, K*C_in, L)``, else None: a packed
    :class:`ConvNet` in training that takes the matmul form (:meth:`ConvNet.uses_matmul`) with the kernel writing
    every stride-2 conv's taps (stride 1 then 2, a length that halves evenly, the kernel running every part of every
    norm layer), ReLU or no activation, a :class:`PackedLinear` head, float32 on the CPU, no hooks and no
    parametrizations (Weight Normalization takes autograd's step). The plan holds while the net's modules, mode and
    the input's shape do (a caller may keep it for the steps of one training)."""
    if not isinstance(net, ConvNet) or net.copies is None or not net.training or x.dim() != 3:
        return None
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[0] < TAPS_MIN_BATCH:
        return None
    if hooked(net) or hooked(net.features) or not isinstance(net.head, PackedLinear) or hooked(net.head):
        return None
    if channel_major_kernel() is None or not net.uses_matmul(x.shape[0], True):
        return None
    if not net.parity_form(x.shape[-1]):
        return None
    convs, norms, acts = net.plain_blocks()
    if any(parametrize.is_parametrized(cast(nn.Module, c)) or c.weight.dtype != torch.float32 for c in convs):
        return None
    if not all(type(a) in (nn.ReLU, nn.Identity) and not hooked(a) for a in acts):
        return None
    n, length, k = x.shape[0], x.shape[-1], net.copies
    plan = []
    for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
        # kernel_cases and a layer without Batch Renorm read the maps' shape, dtype and device only: a stand-in
        standin = x.new_empty(k, conv.out_channels // k, (length >> i) * n)
        cases = kernel_cases(norm, standin, conv.bias)
        if cases is None:
            return None
        renorm = any(type(part) in RENORM_NORMS for part in layer_parts(norm, k)[0])
        fixed = None if renorm else kernel_layer(norm, cases, standin, conv.bias)
        plan.append(FusedLayer(cases=cases, fixed=fixed))
    return plan


@dataclass(frozen=True, kw_only=True)
class _Saved:
    """What one block's backward reads: its input taps (or columns), the conv's output, the kernel's layer and
    saved statistics, and the output layout."""

    taps: Tensor
    y: Tensor
    layer: KernelLayer
    saved: list[Tensor]
    relu: bool
    dest: Tensor
    out_rows: int


@torch.no_grad()
def fused_loss_and_grads(
    net: ConvNet, plan: list[FusedLayer], x: Tensor, target: Tensor, live: Tensor
) -> tuple[Tensor, dict[Tensor, Tensor]]:
    """The runs' mean cross-entropy losses ``(K,)`` of ``net`` (``plan``: :func:`fused_plan` of it) on inputs ``x``
    ``(N, K*C_in, L)`` with labels ``target`` ``(N, K)``, and the gradients of ``(losses * live).sum()`` for every
    parameter (``live`` ``(K,)``: 1 for the runs still learning, 0 for those that stopped). Updates the norms'
    running statistics, as a forward in training does."""
    k, n = cast(int, net.copies), x.shape[0]
    convs, norms, acts = net.plain_blocks()
    halvings = len(convs) - 1
    kernel = cast(Any, channel_major_kernel())  # fused_plan found it
    h = x.reshape(n, k, -1, x.shape[-1]).permute(1, 2, 3, 0)  # (K, C_in, L, N)
    taps = first_conv_columns(h, halvings)
    blocks: list[_Saved] = []
    for i, (conv, norm, act) in enumerate(zip(convs, norms, acts, strict=True)):
        c_out = conv.out_channels // k
        y = torch.bmm(conv.weight.detach().view(k, c_out, taps.shape[1]), taps)
        bias = conv.bias.detach()
        fixed = plan[i].fixed
        layer = fixed if fixed is not None else kernel_layer(norm, plan[i].cases, y, bias)
        dest, out_rows = tap_rows(y.shape[2] // n, halvings - i) if i < halvings else (NO_TABLE, 0)
        relu = isinstance(act, nn.ReLU)
        out, saved, stats = kernel.split_forward(
            y, bias, n, layer.runs, layer.groups, layer.eps, layer.params, relu, dest, out_rows
        )
        update_running_stats(layer, stats, bias, c_out, y.shape[2])
        blocks.append(_Saved(taps=taps, y=y, layer=layer, saved=saved, relu=relu, dest=dest, out_rows=out_rows))
        taps = out.view(k, c_out * 3, -1) if i < halvings else out
    head = cast(PackedLinear, net.head)
    maps = taps.view(k, convs[-1].out_channels // k, -1, n)  # (K, C, L, N)
    pooled = maps.mean(2)  # (K, C, N)
    w_head = head.weight.detach().view(k, head.out_features, -1)
    logits = torch.baddbmm(head.bias.detach().view(k, -1, 1), w_head, pooled)  # (K, classes, N)
    log_probs = torch.log_softmax(logits, dim=1)
    labels = target.t().unsqueeze(1)  # (K, 1, N)
    losses = -log_probs.gather(1, labels).mean((1, 2))

    grads: dict[Tensor, Tensor] = {}
    d_logits = log_probs.exp_()
    d_logits.scatter_add_(1, labels, torch.full_like(labels, -1, dtype=d_logits.dtype))
    d_logits.mul_((live.to(d_logits.dtype) / n).view(k, 1, 1))
    grads[head.weight] = torch.bmm(d_logits, pooled.transpose(1, 2)).view_as(head.weight)
    grads[head.bias] = d_logits.sum(2).view_as(head.bias)
    d_pooled = torch.bmm(w_head.transpose(1, 2), d_logits)  # (K, C, N)
    d_out = (d_pooled / maps.shape[2]).unsqueeze(2).expand(maps.shape).reshape(k, -1)
    for i in range(halvings, -1, -1):
        block, conv = blocks[i], convs[i]
        layer = block.layer
        d_y, d_bias, d_params = kernel.split_backward(
            d_out,
            block.y,
            conv.bias.detach(),
            n,
            layer.runs,
            layer.groups,
            layer.params,
            block.saved,
            block.relu,
            block.dest,
            block.out_rows,
        )
        _norm_grads(layer, d_params, grads)
        grads[conv.bias] = d_bias
        grads[conv.weight] = _weight_grad(d_y, block.taps).view_as(conv.weight)
        if i > 0:
            c_out = conv.out_channels // k
            d_out = torch.bmm(conv.weight.detach().view(k, c_out, -1).transpose(1, 2), d_y).view(k, -1)
    return losses, grads


# From these columns a step (L*N) on, a conv's weight gradient is the product the other way round, transposed: MKL's
# product with the taps read transposed is slower there. Measured on one core (2026-12-07), 20 nets, width 32:
# 776 / 882 us at 640 columns, 462 / 489 at 320, 259 / 236 at 160, 102 / 58 at 40; the first conv's 3 taps:
# 207 / 393 us at 1280, 17 / 28 at 80 (the other way round at every size).
WEIGHT_GRAD_TRANSPOSED_FROM = 320


def _weight_grad(d_y: Tensor, taps: Tensor) -> Tensor:
    """``d_y @ taps^T`` ``(K, C_out, C_in*3)``: a conv's weight gradient from its output's gradient ``(K, C_out,
    M)`` and its input taps ``(K, C_in*3, M)``, by the faster of the two orders of the product."""
    if taps.shape[2] >= WEIGHT_GRAD_TRANSPOSED_FROM or taps.shape[1] < d_y.shape[1]:
        return torch.bmm(taps, d_y.transpose(1, 2)).transpose(1, 2).contiguous()
    return torch.bmm(d_y, taps.transpose(1, 2))


def _norm_grads(layer: KernelLayer, d_params: list[Tensor], grads: dict[Tensor, Tensor]) -> None:
    """Each part's weight and bias gradient from the kernel's gradients of the weight and bias it was given
    (Batch Renorm's ``w * r``, ``b + w * d``: back through the products)."""
    for j, (part, correction) in enumerate(zip(layer.parts, layer.renorm, strict=True)):
        d_weight, d_bias = d_params[2 * j], d_params[2 * j + 1]
        weight, bias = cast(nn.Parameter, part.weight), cast(nn.Parameter, part.bias)
        if correction is not None:
            r, d = correction
            d_weight = torch.addcmul(d_weight * r, d_bias, d)
        grads[weight] = d_weight if d_weight.shape == weight.shape else d_weight.view_as(weight)
        grads[bias] = d_bias if d_bias.shape == bias.shape else d_bias.view_as(bias)
