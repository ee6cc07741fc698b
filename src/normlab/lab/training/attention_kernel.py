"""Causal self-attention of packed variable-length sequences, the language model's attention on its real tokens
(:meth:`normlab.lab.training.transformer.CharTransformer.forward_unpadded`).

``qkv`` ``(R, 3D)``: the fused in-projection of R packed tokens, ``[q | k | v]`` as ``nn.MultiheadAttention``'s
``in_proj`` lays it out (head h: columns ``h*dh .. (h+1)*dh - 1`` of each, ``dh = D / heads``); ``offsets``
``(N+1,)`` int64: sequence i is rows ``offsets[i] .. offsets[i+1] - 1`` in position order (``offsets[0] = 0``,
nondecreasing, ``offsets[N] = R``). Per sequence and head, with ``scale = 1 / sqrt(dh)``::

    o_j = sum_{k <= j} softmax_k(scale q_j . k_k) v_k          (keys of the query's own sequence, positions <= j)

and the output ``(R, D)`` has the heads side by side (head h in columns ``h*dh ..``), what
``scaled_dot_product_attention(..., is_causal=True)`` gives on the zero-padded batch at the real positions. With
``keys`` ``(N,)`` (``1 <= K_i <= L_i``) a query sees the keys at positions ``0 .. min(j, K_i - 1)``: sequences
right-padded to ``L_i`` whose first ``K_i`` tokens are real, every position (padding too) attending to the real
keys at and before it, as a causal mask and a key padding mask give (the padded batch a BatchNorm model trains on).

:func:`packed_causal_attention` computes it with the compiled CPU kernel (``csrc/causal_attention.cpp``; forward and
flash-style backward from the saved log-sum-exp, formulas at the top of that file) directly on the R tokens, or on
the pure-ATen path (:func:`padded_causal_attention`: the tokens scattered into the zero-padded ``(N, T)`` layout,
``scaled_dot_product_attention``, gathered back) where the kernel is None (``NORMLAB_NO_KERNELS=1``, or a failed
compile, warned once), the tensors are not on the CPU, or dropout is asked for. The kernel is a
:class:`normlab.functional._kernels.Kernel` like normlab's other kernels.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...functional._kernels import Kernel

__all__ = [
    "CAUSAL_ATTENTION",
    "PackedCausalAttention",
    "attention_kernel",
    "packed_causal_attention",
    "padded_causal_attention",
]

CAUSAL_ATTENTION = Kernel(
    Path(__file__).with_name("csrc") / "causal_attention.cpp",
    "packed causal attention",
    "the language model's attention runs on its pure-ATen path (padded scaled_dot_product_attention)",
)

_FLOATS = (torch.float32, torch.float64)


def attention_kernel() -> ModuleType | None:
    """The compiled module (``forward(qkv, offsets, keys, heads) -> (out, lse)``, ``backward(grad, qkv, offsets,
    keys, out, lse, heads) -> grad_qkv``; ``keys`` empty: every token a key), compiled on the first call; None if
    kernels are disabled or the compile failed (warned once)."""
    return CAUSAL_ATTENTION.module()


class PackedCausalAttention(torch.autograd.Function):
    """The kernel as an autograd node: ``out`` ``(R, D)`` from ``qkv`` ``(R, 3D)`` contiguous and ``offsets``; saves
    qkv, the output and the log-sum-exp per (row, head) ``(R, heads)``, from which the backward recomputes the
    probabilities (``dP = dO V^T``, ``dS = P (dP - delta)``, ``delta_j = dO_j . O_j``, ``dQ = scale dS K``,
    ``dK = scale dS^T Q``, ``dV = P^T dO``). Returns the gradient of qkv only; differentiable once."""

    @staticmethod
    def forward(ctx: Any, qkv: Tensor, offsets: Tensor, keys: Tensor, heads: int, kernel: Any) -> Tensor:
        out, lse = kernel.forward(qkv, offsets, keys, heads)
        ctx.save_for_backward(qkv, offsets, keys, out, lse)
        ctx.heads, ctx.kernel = heads, kernel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        qkv, offsets, keys, out, lse = ctx.saved_tensors
        return ctx.kernel.backward(grad.contiguous(), qkv, offsets, keys, out, lse, ctx.heads), None, None, None, None


_NO_KEYS = torch.empty(0, dtype=torch.int64)  # the kernel's "every token a key"


def _check(qkv: Tensor, offsets: Tensor, heads: int, keys: Tensor | None) -> None:
    """The checks that read no values (no sync): shapes, dtypes, devices. The kernel checks offsets' values; the
    padded path checks them itself."""
    name = "packed_causal_attention"
    if heads < 1:
        raise ValueError(f"{name}: heads must be at least 1, got {heads}")
    if qkv.dim() != 2:
        raise ValueError(f"{name}: qkv must be 2-D (R, 3D), got {qkv.dim()} dims")
    if qkv.shape[1] == 0 or qkv.shape[1] % (3 * heads):
        raise ValueError(
            f"{name}: qkv's columns ({qkv.shape[1]}) must be 3 * D with D a positive multiple of heads ({heads})"
        )
    if qkv.dtype not in _FLOATS:
        raise ValueError(f"{name}: qkv must be float32 or float64, got {qkv.dtype}")
    if offsets.dtype != torch.int64:
        raise ValueError(f"{name}: offsets must be int64, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        shape = tuple(offsets.shape)
        raise ValueError(f"{name}: offsets must be 1-D (N+1,) with at least one entry, got shape {shape}")
    if offsets.device != qkv.device:
        raise ValueError(f"{name}: offsets must be on qkv's device ({qkv.device}), got {offsets.device}")
    if keys is not None and (keys.dtype != torch.int64 or keys.shape != (offsets.numel() - 1,)):
        raise ValueError(
            f"{name}: keys must be int64 of shape (N,) = ({offsets.numel() - 1},), got {keys.dtype} {tuple(keys.shape)}"
        )
    if keys is not None and keys.device != qkv.device:
        raise ValueError(f"{name}: keys must be on qkv's device ({qkv.device}), got {keys.device}")


def packed_causal_attention(
    qkv: Tensor, offsets: Tensor, heads: int, dropout: float = 0.0, keys: Tensor | None = None
) -> Tensor:
    """Causal multi-head attention of packed sequences (the formula at the top of the module): ``qkv`` ``(R, 3D)``
    float32 or float64, ``offsets`` ``(N+1,)`` int64 on its device, ``heads`` dividing D, ``keys`` ``(N,)`` int64
    each sequence's real tokens (None: all of them); returns ``(R, D)``.
    On the CPU with ``dropout`` 0: the compiled kernel (one autograd node), else :func:`padded_causal_attention`
    (also where the kernel is None), which applies ``dropout`` to the attention weights as
    ``scaled_dot_product_attention`` does. Bad arguments raise ValueError naming the argument.

    >>> import torch
    >>> from normlab.lab.training.attention_kernel import packed_causal_attention
    >>> qkv = torch.randn(5, 3 * 8)  # two sequences, of 2 and 3 tokens; D = 8, two heads of 4
    >>> out = packed_causal_attention(qkv, torch.tensor([0, 2, 5]), heads=2)
    >>> out.shape
    torch.Size([5, 8])
    >>> bool(torch.allclose(out[0], qkv[0, 16:]) and torch.allclose(out[2], qkv[2, 16:]))  # a first token: its v
    True
    """
    _check(qkv, offsets, heads, keys)
    kernel = attention_kernel() if qkv.device.type == "cpu" and dropout == 0.0 else None
    if kernel is None:
        return _padded_attention(qkv, offsets, heads, dropout, keys)
    return PackedCausalAttention.apply(qkv.contiguous(), offsets, _NO_KEYS if keys is None else keys, heads, kernel)


def padded_causal_attention(
    qkv: Tensor, offsets: Tensor, heads: int, dropout: float = 0.0, keys: Tensor | None = None
) -> Tensor:
    """What :func:`packed_causal_attention` computes, in pure ATen (any device, any dropout): the R tokens scattered
    into a zero-padded ``(N * T, 3D)`` buffer (T the longest sequence), one
    ``scaled_dot_product_attention(..., is_causal=True)`` (a real query sees only real keys: padding is at the end;
    with ``keys``, under the mask of each sequence's first K_i keys too), the real rows gathered back. Reads
    ``offsets`` (and ``keys``) once (a sync on an accelerator) to check them and to find T.

    >>> import torch
    >>> from normlab.lab.training.attention_kernel import padded_causal_attention
    >>> padded_causal_attention(torch.randn(5, 3 * 8), torch.tensor([0, 2, 5]), heads=2).shape
    torch.Size([5, 8])
    """
    _check(qkv, offsets, heads, keys)
    return _padded_attention(qkv, offsets, heads, dropout, keys)


def _padded_attention(qkv: Tensor, offsets: Tensor, heads: int, dropout: float, keys: Tensor | None) -> Tensor:
    """:func:`padded_causal_attention` of checked arguments (:func:`_check`)."""
    bounds = offsets.tolist()
    name, r, d = "packed_causal_attention", qkv.shape[0], qkv.shape[1] // 3
    if bounds[0] != 0:
        raise ValueError(f"{name}: offsets[0] must be 0, got {bounds[0]}")
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if b < a:
            raise ValueError(f"{name}: offsets must be nondecreasing, offsets[{i + 1}] = {b} < offsets[{i}] = {a}")
    if bounds[-1] != r:
        raise ValueError(f"{name}: offsets[-1] must be qkv's rows R = {r}, got {bounds[-1]}")
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for i, (length, k) in enumerate(zip(lengths, [] if keys is None else keys.tolist(), strict=False)):
        if not (length == k == 0 or 1 <= k <= length):
            raise ValueError(f"{name}: keys[{i}] must be between 1 and the sequence's length {length}, got {k}")
    n = len(bounds) - 1
    t = max(lengths, default=0)
    if t == 0:  # no tokens: an empty output, still a function of qkv
        return qkv[:, :d] * 0
    rows = torch.arange(r, device=qkv.device)
    seq = torch.searchsorted(offsets[1:], rows, right=True)  # each row's sequence
    real = seq * t + rows - offsets[seq]  # (R,): each row's slot in the padded (N * T) layout, found without a sync
    full = qkv.new_zeros(n * t, 3 * d).index_copy(0, real, qkv).view(n, t, 3, heads, d // heads)
    q, k, v = full.permute(2, 0, 3, 1, 4)  # each (N, heads, T, dh): views
    if keys is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (N, heads, T, dh)
    else:  # key j allowed for query i where j <= i and j < K
        position = torch.arange(t, device=qkv.device)
        allowed = (position[None, :] <= position[:, None]) & (position < keys[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
    return out.transpose(1, 2).reshape(n * t, d).index_select(0, real)
