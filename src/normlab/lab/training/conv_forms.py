"""The packed ConvNet's convolutions as batched matrix products (``ConvNet.packed_form`` "matmul"): K nets'
kernel-3, padding-1 1-d convolutions over channel-major maps ``(K, C, L, N)`` (the batch last).

Two forms. :class:`Im2Col` builds each conv's columns ``(K, C*3, L_out*N)`` (a copy of 1.5 to 3 times the input)
for one ``baddbmm``; it takes any length. :class:`ParityConv` needs no columns: a net whose first conv has stride 1
and the others stride 2, on a length that halves evenly at every stride-2 conv, keeps its maps' positions in the
order of :func:`position_order` (even positions, then odd ones, each half again in that order), so that a stride-2
conv reads its input as two matrices, the even and odd halves ``(K, C, L/2*N)``, without a copy: taps 1 and 2 (at
``2l`` and ``2l+1``) are one product over the rows ``(c, parity)``, tap 0 (at ``2l-1``, the odd half one position
back) a second product whose result is added, shifted, in a few contiguous blocks (:func:`shift_runs`). The norms
after the convs (per-channel or per-example statistics over all positions) and the average pool do not depend on
the positions' order, so every layer runs on the stored order and the result is the same function.

Where the norm before a stride-2 conv runs as the compiled kernel, it writes its output straight into that conv's
taps ``(K, C, 3, L/2*N)`` (:func:`tap_rows`: tap 1 the even half, tap 2 the odd half, tap 0 the odd half shifted by
the blocks of :func:`shift_runs`, zero where it reads the padding): the conv is then one ``bmm`` of the weight
viewed ``(K, C_out, C*3)`` (its own layout) and autograd's two products are its backward, with no ParityConv.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Im2Col",
    "ParityConv",
    "INPLACE_MIN_BATCH",
    "position_order",
    "shift_runs",
    "first_conv_columns",
    "tap_rows",
]


@cache
def position_order(length: int, halvings: int) -> tuple[int, ...]:
    """The stored order of a map of ``length`` positions that ``halvings`` stride-2 convs read next: the even
    positions, then the odd ones, each half in ``position_order(length // 2, halvings - 1)``. ValueError where
    ``length`` does not halve evenly ``halvings`` times."""
    if halvings == 0:
        return tuple(range(length))
    if length % 2:
        raise ValueError(f"position_order: length {length} does not halve {halvings} more times")
    half = position_order(length // 2, halvings - 1)
    return tuple(2 * j for j in half) + tuple(2 * j + 1 for j in half)


@cache
def shift_runs(length: int, halvings: int) -> tuple[tuple[int, int, int], ...]:
    """For a stride-2 conv whose input of ``length`` positions is stored in ``position_order(length, halvings)``
    (its output, ``length // 2`` positions, in ``position_order(length // 2, halvings - 1)``): the blocks
    ``(out_slot, odd_slot, count)`` in which output position l takes tap 0 from input ``2l - 1``, the odd half's
    position ``l - 1`` (none for l = 0): slots ``out_slot .. out_slot + count - 1`` of the output read slots
    ``odd_slot ..`` of the odd half, in order."""
    out = position_order(length // 2, halvings - 1)
    slot = {p: i for i, p in enumerate(out)}
    pairs = [(i, slot[p - 1]) for i, p in enumerate(out) if p > 0]
    runs: list[list[int]] = []
    for i, j in pairs:
        if runs and runs[-1][0] + runs[-1][2] == i and runs[-1][1] + runs[-1][2] == j:
            runs[-1][2] += 1
        else:
            runs.append([i, j, 1])
    return tuple((a, b, c) for a, b, c in runs)


@cache
def tap_rows(length: int, halvings: int) -> tuple[Tensor, int]:
    """The norm kernel's output table for maps of ``length`` positions stored in ``position_order(length,
    halvings)`` that a stride-2 conv reads next: ``(dest, 3 * length // 2)``, ``dest`` ``(length, 2)`` int64, the
    rows (of ``length // 2`` positions each tap, tap-major: row ``t * length // 2 + i`` is tap t at output slot i)
    that stored slot s is written to, -1 for none. Even slot i (< length/2) goes to tap 1 at i; odd slot j to tap 2
    at j and to tap 0 at the output slot that reads it (:func:`shift_runs`; the last odd position to none), so the
    row of tap 0 at output position 0 (input position -1, the padding) is nobody's: the kernel writes it 0. The rows
    of channel c are then the conv's columns ``(c*3 + t, i*N + n)``, the weight's own order."""
    half = length // 2
    if halvings < 1 or length % 2:
        raise ValueError(f"tap_rows: a stride-2 conv's input must halve evenly, got length {length}")
    dest = [[half + i, -1] for i in range(half)] + [[2 * half + j, -1] for j in range(half)]
    for out_slot, odd_slot, count in shift_runs(length, halvings):
        for t in range(count):
            dest[half + odd_slot + t][1] = out_slot + t
    return torch.tensor(dest, dtype=torch.long), 3 * half


@cache
def _taps(length: int, halvings: int) -> Tensor:
    order = torch.tensor(position_order(length, halvings))
    return order + torch.arange(3).view(3, 1)


def first_conv_columns(x: Tensor, halvings: int) -> Tensor:
    """The columns ``(K, C*3, L*N)`` of a stride-1 kernel-3 padding-1 conv over natural-order maps ``x``
    ``(K, C, L, N)``, with the output positions in ``position_order(L, halvings)`` (a gather; differentiable)."""
    k, c, length, n = x.shape
    taps = _taps(length, halvings).to(x.device)  # (3, L): the padded input's position of tap j at slot i
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1))  # (K, C, L+2, N)
    # index_select over the flattened (3*L) taps: the same gather in half the time of advanced indexing
    return padded.index_select(2, taps.flatten()).view(k, c * 3, length * n)


# From this batch on, ParityConv adds tap 0 by products accumulated in place on the output's blocks (strided views,
# which ATen's CPU baddbmm_ runs as one addmm_ a net): no separate product, sum or shifted copy. Below it the K small
# addmm_ calls a block cost more than they save. Measured, one core, width 32, fwd+bwd of the three stride-2 convs
# (2026-12-07, machine under load): 0.89x of the time at K=16, batch 32; 1.11x to 1.30x at batch 2 and 8 (K 16, 64).
INPLACE_MIN_BATCH = 32


class ParityConv(torch.autograd.Function):
    """A stride-2, kernel-3, padding-1 conv of K nets over maps ``x`` ``(K, C, L, N)`` (contiguous) stored in
    ``position_order(L, halvings)``; weight ``(K*C_out, C, 3)``; output ``(K, C_out, L/2*N)`` in
    ``position_order(L/2, halvings - 1)``, without the conv's bias (the norm after it adds it). One batched product
    for taps 1 and 2; tap 0 (the odd half, shifted by the blocks of :func:`shift_runs`) either as products
    accumulated in place on the output's blocks (from :data:`INPLACE_MIN_BATCH` examples) or as a second product
    added block by block. Backward likewise for the input's odd rows and tap 0's weight gradient. No columns."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, halvings: int) -> Tensor:
        k, c, length, n = x.shape
        c_out, m = weight.shape[0] // k, length // 2 * n
        w = weight.view(k, c_out, c, 3)
        w12 = w[..., 1:].reshape(k, c_out, 2 * c)  # rows (c, parity) of the input: taps 1 and 2
        w0 = w[..., 0].contiguous()  # (K, C_out, C): tap 0, on the odd half
        rows = x.view(k, 2 * c, m)
        odd = x.view(k, c, 2, m)[:, :, 1]
        y = torch.bmm(w12, rows)
        runs = shift_runs(length, halvings)
        blocks = [(slice(o * n, (o + count) * n), slice(j * n, (j + count) * n)) for o, j, count in runs]
        if n >= INPLACE_MIN_BATCH:
            for out_block, odd_block in blocks:  # y[out block] += w0 @ odd[odd block], in place
                y[:, :, out_block].baddbmm_(w0, odd[:, :, odd_block])
        else:
            p = torch.bmm(w0, odd)
            for out_block, odd_block in blocks:
                y[:, :, out_block].add_(p[:, :, odd_block])
        ctx.save_for_backward(x, w12, w0)
        ctx.blocks = blocks
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, w12, w0 = ctx.saved_tensors
        k, c, length, n = x.shape
        c_out, m = w12.shape[1], length // 2 * n
        grad = grad.contiguous()
        rows = x.view(k, 2 * c, m)
        odd = x.view(k, c, 2, m)[:, :, 1]
        inplace = n >= INPLACE_MIN_BATCH
        gp = None  # tap 0's gradient, unshifted (the small-batch way)
        if not inplace:
            gp = grad.new_zeros(k, c_out, m)
            for out_block, odd_block in ctx.blocks:
                gp[:, :, odd_block].copy_(grad[:, :, out_block])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(w12.transpose(1, 2), grad)  # (K, 2C, M): rows (c, parity), the input's layout
            odd_grad = grad_x.view(k, c, 2, m)[:, :, 1]
            if gp is None:
                for out_block, odd_block in ctx.blocks:
                    odd_grad[:, :, odd_block].baddbmm_(w0.transpose(1, 2), grad[:, :, out_block])
            else:
                odd_grad.add_(torch.bmm(w0.transpose(1, 2), gp))
            grad_x = grad_x.view(k, c, length, n)
        if ctx.needs_input_grad[1]:
            g12 = torch.bmm(grad, rows.transpose(1, 2)).view(k, c_out, c, 2)
            if gp is None:
                g0 = grad.new_zeros(k, c_out, c)
                for out_block, odd_block in ctx.blocks:
                    g0.baddbmm_(grad[:, :, out_block], odd[:, :, odd_block].transpose(1, 2))
            else:
                g0 = torch.bmm(gp, odd.transpose(1, 2))
            grad_w = torch.stack([g0, g12[..., 0], g12[..., 1]], dim=3).view(k * c_out, c, 3)  # cat: 2x slower
        return grad_x, grad_w, None


class Im2Col(torch.autograd.Function):
    """``(K, C, L, N)`` maps (any strides; N, the batch, last) -> ``(K, C*3, L_out*N)`` columns of a kernel-3,
    padding-1 conv with stride 1 or 2: row ``c*3 + j`` at output position l holds input ``s*l + j - 1`` (0 outside
    the map), the order of a conv weight ``(C_out, C, 3)`` flattened. With the batch last, every tap is a copy of
    whole ``(N,)`` rows; backward adds each tap's gradient back in place (no scatter kernel)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, stride: int) -> Tensor:
        k, c, length, n = x.shape
        out_len = (length - 1) // stride + 1
        cols = x.new_empty(k, c, 3, out_len, n)
        if stride == 1:
            cols[:, :, 1].copy_(x)
            cols[:, :, 0, 1:].copy_(x[:, :, :-1])
            cols[:, :, 2, :-1].copy_(x[:, :, 1:])
            cols[:, :, 2, -1].zero_()
        else:  # stride 2: tap 1 reads the even positions, tap 2 the odd ones, tap 0 the odd ones one step back
            even, odd = x[:, :, 0::2], x[:, :, 1::2]
            cols[:, :, 1].copy_(even)
            cols[:, :, 2, : odd.shape[2]].copy_(odd)
            cols[:, :, 2, odd.shape[2] :].zero_()
            cols[:, :, 0, 1:].copy_(odd[:, :, : out_len - 1])
        cols[:, :, 0, 0].zero_()
        ctx.stride, ctx.shape = stride, x.shape
        return cols.view(k, c * 3, out_len * n)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        k, c, length, n = ctx.shape
        out_len = (length - 1) // ctx.stride + 1
        grad = grad.view(k, c, 3, out_len, n)
        if ctx.stride == 1:
            gx = grad[:, :, 1].clone()
            gx[:, :, :-1].add_(grad[:, :, 0, 1:])
            gx[:, :, 1:].add_(grad[:, :, 2, :-1])
            return gx, None
        gx = grad.new_empty(k, c, length, n)
        odd = gx[:, :, 1::2]
        gx[:, :, 0::2].copy_(grad[:, :, 1])
        odd.copy_(grad[:, :, 2, : odd.shape[2]])
        odd[:, :, : out_len - 1].add_(grad[:, :, 0, 1:])
        return gx, None
