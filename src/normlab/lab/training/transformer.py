"""The lab's character-level transformer: pre-norm blocks whose norms are taken by name (any registered method),
trained on the real tokens of right-padded batches where the norm is per token
(:meth:`CharTransformer.forward_unpadded`), on the padded batch where it mixes tokens (BatchNorm, naively, as
PowerNorm studies it)."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_kernel import packed_causal_attention
from .models import make_norm

__all__ = ["CharTransformer", "Linear", "TokenNorm", "attention_mask", "linear"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x @ weight.T + bias`` over the last dim of ``x`` ``(..., in)``. On the CPU
    the product is one matrix product of the flattened rows and the bias is added to it in place: ATen's ``addmm``
    first copies the bias into every row of its output, which its product then reads back. The same values (one
    rounding of the product plus the bias); 3-8% less time a language-model step (RESULTS.md, session 18)."""
    if bias is None or not x.is_cpu or x.dim() < 2:
        return F.linear(x, weight, bias)
    rows = torch.mm(x.reshape(-1, x.shape[-1]), weight.t())
    return rows.add_(bias).view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (the same parameters and state_dict) computed by :func:`linear`."""

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)


class TokenNorm(nn.Module):
    """A norm over the feature dim of ``(N, T, D)`` tokens: built for vectors and applied to the flattened tokens,
    so BatchNorm takes statistics over every token of the batch, padding included (the naive use PowerNorm studies)."""

    def __init__(self, name: str, dim: int, role: str | None = None) -> None:
        super().__init__()
        self.norm = make_norm(name, dim, spatial_dims=0, role=role)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        return self.norm(x.reshape(n * t, d)).reshape(n, t, d)


class _Block(nn.Module):
    """A pre-norm block. The attention keeps ``nn.MultiheadAttention``'s parameters (state_dict keys
    ``attn.in_proj_weight``, ...) and computes what it computes, as one fused QKV projection and one
    ``scaled_dot_product_attention`` under a single boolean mask, without the module's layout copies and its float
    mask of ``(N*heads, T, T)``."""

    def __init__(self, dim: int, heads: int, norm: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = TokenNorm(norm, dim, "attention"), TokenNorm(norm, dim, "mlp")
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(Linear(dim, 4 * dim), nn.GELU(), Linear(4 * dim, dim))

    def attention(self, h: Tensor, allowed: Tensor) -> Tensor:
        """Self-attention of ``h`` ``(N, T, D)``; ``allowed`` ``(N, 1, T, T)``, True (or 0 in an additive float mask)
        where a query may see a key."""
        n, t, d = h.shape
        heads = self.attn.num_heads
        qkv = linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias).view(n, t, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, T, D/heads): views
        dropout = self.attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return linear(out.transpose(1, 2).reshape(n, t, d), self.attn.out_proj.weight, self.attn.out_proj.bias)

    def attention_packed(self, h: Tensor, offsets: Tensor, keys: Tensor | None = None) -> Tensor:
        """Self-attention of packed sequences' tokens ``h`` (``(..., D)``, R tokens in order; ``offsets``
        ``(N+1,)``: sequence i is tokens ``offsets[i] .. offsets[i+1] - 1``; ``keys`` ``(N,)``: its first K_i tokens
        are real, the rest padding, which no query attends to; None: all real): projections on the R tokens, each
        sequence's causal attention (:func:`~normlab.lab.training.attention_kernel.packed_causal_attention`: the
        compiled kernel on the packed tokens, or the padded layout and ``scaled_dot_product_attention``, where the
        kernel is None or the attention's dropout applies)."""
        dropout = self.attn.dropout if self.training else 0.0
        qkv = linear(h.reshape(-1, h.shape[-1]), self.attn.in_proj_weight, self.attn.in_proj_bias)  # (R, 3D)
        out = packed_causal_attention(qkv, offsets, self.attn.num_heads, dropout, keys)  # (R, D)
        return linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias).view(h.shape)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), allowed)
        return x + self.mlp(self.norm2(x))


def attention_mask(padding: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(N, 1, T, T)``, True where query i may attend to key j: j <= i and j not padding (``padding`` ``(N, T)``,
    True at pad positions), what ``nn.MultiheadAttention`` gets from a causal mask and a key padding mask. With a
    float ``dtype``: the additive mask, 0 where allowed and -inf elsewhere (made once, not in every attention call)."""
    t = padding.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=padding.device).tril_()
    allowed = causal & ~padding[:, None, None, :]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=padding.device).masked_fill_(~allowed, float("-inf"))


def _pad_before_real(padding: Tensor) -> Tensor:
    """Per sequence ``(N,)``: whether a real token follows a pad (its padding is not all at its end)."""
    return (padding[:, :-1] & ~padding[:, 1:]).any(1)


class CharTransformer(nn.Module):
    """A pre-norm character-level transformer; ``padding`` marks pad positions ``(N, T)``."""

    def __init__(
        self, vocab: int, norm: str, dim: int = 64, layers: int = 2, heads: int = 4, max_len: int = 256
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab + 1, dim)  # the last id is padding
        self.pos = nn.Parameter(torch.randn(max_len, dim) / math.sqrt(dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, norm) for _ in range(layers))
        self.final_norm = TokenNorm(norm, dim, "final")
        self.head = Linear(dim, vocab)

    def forward(self, tokens: Tensor, padding: Tensor, *, real_only: bool = False) -> Tensor:
        """The logits ``(N, T, vocab)`` of every position, padding included (a query at a pad position attends to
        the real keys before it). Right-padded sequences of at least one real token each take the attention of
        packed sequences (:meth:`_Block.attention_packed`, each sequence's first tokens its keys); any other padding
        the boolean mask (:func:`attention_mask`). The same function either way, up to float rounding.

        With ``real_only``, the real positions' logits only, ``(R, vocab)``: the rows of ``forward(...)[~padding]``.
        Every layer up to the final norm still runs on the padded batch, so a norm that mixes tokens still takes its
        statistics over the padding. Only the head skips the padding rows, whose logits no loss reads."""
        n, t = tokens.shape
        x = self.embed(tokens) + self.pos[:t]
        # one sync: a real token after a pad, or a sequence of padding only
        if bool((_pad_before_real(padding) | padding[:, 0]).any()):
            allowed = attention_mask(padding, x.dtype)
            for block in self.blocks:
                x = block(x, allowed)
            x = self.final_norm(x)
        else:
            offsets, keys = torch.arange(0, (n + 1) * t, t, device=tokens.device), t - padding.sum(1)
            x = self._packed_blocks(x, offsets, keys)
        return self.head(x[~padding] if real_only else x)

    def _packed_blocks(self, x: Tensor, offsets: Tensor, keys: Tensor | None = None) -> Tensor:
        """The blocks and the final norm over ``x`` whose rows are packed sequences (``offsets``; ``keys``: each
        sequence's real keys, :meth:`_Block.attention_packed`)."""
        for block in cast("list[_Block]", self.blocks):
            x = x + block.attention_packed(block.norm1(x), offsets, keys)
            x = x + block.mlp(block.norm2(x))
        return cast(Tensor, self.final_norm(x))

    def forward_unpadded(self, tokens: Tensor, padding: Tensor) -> Tensor:
        """The logits of the real (not padding) positions only, ``(R, vocab)`` in row-major order (the rows of
        ``logits[~padding]``), for right-padded sequences (``padding`` True from each sequence's length on;
        ValueError otherwise). Every token-wise layer (embedding, norms, projections, MLP, head) runs on the R real
        tokens, and so does the attention, causal within each sequence
        (:func:`~normlab.lab.training.attention_kernel.packed_causal_attention`: a real position sees the real keys
        at and before it, as with the padding mask).
        The real positions' logits equal :meth:`forward`'s up to float rounding for a norm that is not batch
        dependent; a batch-dependent one (BatchNorm) would take its statistics over the real tokens only, and a hook
        on a norm sees ``(1, R, D)`` real tokens, not the padded batch (the lab trains a model whose norms are per
        token this way: ``training.train.CharLMTraining``; timed in benchmarks/packed_bench.py)."""
        n, t = tokens.shape
        if bool(_pad_before_real(padding).any()):
            raise ValueError("forward_unpadded: padding must be at the end of each sequence")
        real = (~padding).flatten().nonzero().squeeze(1)  # (R,)
        offsets = F.pad(torch.cumsum(t - padding.sum(1), 0), (1, 0))  # (N+1,): sequence i is rows offsets[i]..
        x = (self.embed(tokens.flatten()[real]) + self.pos[:t].repeat(n, 1)[real]).unsqueeze(0)  # (1, R, D)
        return self.head(self._packed_blocks(x, offsets).squeeze(0))

    def forward_multihead(self, tokens: Tensor, padding: Tensor) -> Tensor:
        """What :meth:`forward` computes, the slow way: each block's attention by ``nn.MultiheadAttention`` itself,
        with a causal mask and a key padding mask (the reference the fast attention is tested and timed against)."""
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:t]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), diagonal=1)
        for block in cast("list[_Block]", self.blocks):  # a ModuleList of _Block
            h = block.norm1(x)
            x = x + block.attn(h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0]
            x = x + block.mlp(block.norm2(x))
        return self.head(self.final_norm(x))
