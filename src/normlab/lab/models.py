"""Small models for the lab. Every one takes its normalization by name through :func:`normlab.create_norm`, so
``--norms`` accepts any registered method, including ones added after the lab was written."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import nn as nl
from ..registry import conv_layer, create_norm, create_packed_norm, get_method

__all__ = [
    "ConvNet", "PackedLinear", "CharTransformer", "make_norm", "norm_kwargs", "NotApplicable", "uses_weight_norm",
]


def uses_weight_norm(norm: str, weight_norm: bool) -> bool:
    """Whether a run's layers are weight-normalized: asked for, or the norm's recipe pairs it with Weight
    Normalization (mean-only BN)."""
    try:
        return weight_norm or get_method(norm).recipe.weight_norm
    except ValueError:
        return weight_norm


class NotApplicable(ValueError):
    """A norm that cannot be used in a model (e.g. InstanceNorm on token features); the study records why."""


def _default_groups(channels: int) -> int:
    return max(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and g <= max(1, channels // 2))


def norm_kwargs(name: str, channels: int) -> dict:
    """Lab defaults: a grouped method gets 32 groups from 64 channels up, else the most groups of at least 2
    channels each (16 groups of 2 on the lab's 32 channels)."""
    if not get_method(name).grouped:
        return {}
    return {"num_groups": _default_groups(channels) if channels < 64 else 32}


def make_norm(
    name: str, channels: int, spatial_dims: int, copies: int | None = None, options: dict | None = None,
    role: str | None = None,
) -> nn.Module:
    """``create_norm`` with the lab's defaults (:func:`norm_kwargs`) and the method's recipe for its ``role`` in a
    transformer block (:class:`normlab.method.Recipe`), then ``options``. With ``copies``, the packed norm of that
    many independent models. NotApplicable where the method does not apply (the registry says why)."""
    try:
        recipe = get_method(name).recipe.options_for(role)
    except ValueError as err:
        raise NotApplicable(str(err)) from err
    kwargs = {**norm_kwargs(name, channels), **recipe, **(options or {})}
    try:
        if copies is not None:
            return create_packed_norm(name, channels, copies, spatial_dims=spatial_dims, **kwargs)
        return create_norm(name, channels, spatial_dims=spatial_dims, **kwargs)
    except ValueError as err:
        raise NotApplicable(str(err)) from err


def run_groups(norms: Sequence[str], options: Sequence[dict | None]) -> list[list[int]]:
    """Consecutive runs with the same norm and options: the parts of a mixed pack's norm layers."""
    groups: list[list[int]] = []
    for i, key in enumerate(zip(norms, options)):
        if groups and key == (norms[groups[-1][0]], options[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class SplitNorm(nn.Module):
    """A mixed pack's norm layer: consecutive channel blocks, each the packed norm of one group of runs (runs of
    one norm). State dict keys ``parts.{g}.*``; ``run_groups`` says which runs each part holds."""

    def __init__(self, parts: list[nn.Module], sizes: list[int], run_groups: list[list[int]]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.sizes = sizes
        self.run_groups = run_groups

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, x.split(self.sizes, dim=1))], dim=1)


class ConvNet(nn.Module):
    """conv-norm-ReLU blocks (stride 2 after the first), global average pool, linear head. 1-d or 2-d by the data.
    A norm with its activation built in (FRN + TLU, EvoNorm) takes the ReLU's place, as in its paper.

    With ``weight_norm=True`` every conv and the head are weight-normalized (Salimans & Kingma).

    With ``copies=K`` it is K independent nets packed side by side (see :mod:`normlab.lab.packed`): grouped convs,
    the norm's packed form and a per-copy head, with the same state_dict keys as one net and every tensor the K
    nets' tensors concatenated. Input ``(N, K*C_in, *S)``, output ``(N, K, classes)``. ``norm`` (and
    ``norm_options``) may give one entry per copy: runs of several norms then share one pack, each norm layer a
    :class:`SplitNorm` of the norms' packed forms.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int,
        norm: str | Sequence[str] = "batch",
        width: int = 32,
        depth: int = 3,
        weight_norm: bool = False,
        copies: int | None = None,
        norm_options: dict | Sequence[dict | None] | None = None,
    ) -> None:
        super().__init__()
        k = copies or 1
        norms = [norm] * k if isinstance(norm, str) else list(norm)
        options = [norm_options] * k if norm_options is None or isinstance(norm_options, dict) else list(norm_options)
        if len(norms) != k or len(options) != k:
            raise ValueError(f"ConvNet: one norm and one options entry per copy ({k}), got {len(norms)}, {len(options)}")
        conv = self._conv(norms[0], spatial_dims)
        if any(self._conv(n, spatial_dims) is not conv for n in norms[1:]):
            raise ValueError("ConvNet: packed runs must share their conv kind (Weight Standardization or plain)")
        fused = get_method(norms[0]).fused_activation  # FRN+TLU, EvoNorm: the norm is the activation too
        if any(get_method(n).fused_activation != fused for n in norms[1:]):
            raise ValueError("ConvNet: packed runs must share their activation (fused in the norm or ReLU)")
        groups = run_groups(norms, options)
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            if copies is None or len(groups) == 1:
                norm_layer = make_norm(norms[0], width, spatial_dims, copies, options[0])
            else:
                parts = [make_norm(norms[g[0]], width, spatial_dims, len(g), options[g[0]]) for g in groups]
                norm_layer = SplitNorm(parts, [len(g) * width for g in groups], groups)
            layers += [conv(k * c, k * width, 3, stride=1 if i == 0 else 2, padding=1, groups=k), norm_layer, nn.Identity() if fused else nn.ReLU()]
            c = width
        self.copies = copies
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1) if spatial_dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes) if copies is None else PackedLinear(copies, width, num_classes)
        if weight_norm:
            for m in list(self.features) + [self.head]:
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, PackedLinear)):
                    nl.weight_norm(m)

    @staticmethod
    @lru_cache(maxsize=None)
    def _conv(norm: str, spatial_dims: int):
        """The registry's conv for weight-level methods (Weight Standardization, Spectral Norm), else nn.ConvNd."""
        try:
            special = conv_layer(norm, spatial_dims)
        except ValueError as err:
            raise NotApplicable(str(err)) from err
        if special is not None:
            return special
        return {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class PackedLinear(nn.Module):
    """K independent ``Linear(in, out)`` layers: weight ``(K*out, in)``, bias ``(K*out,)``; ``(N, K*in) -> (N, K, out)``."""

    def __init__(self, copies: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.copies, self.in_features, self.out_features = copies, in_features, out_features
        self.weight = nn.Parameter(torch.empty(copies * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(copies * out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        k, i, o = self.copies, self.in_features, self.out_features
        w = self.weight.view(k, o, i)
        return torch.baddbmm(self.bias.view(k, 1, o), x.view(-1, k, i).transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)


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
    def __init__(self, dim: int, heads: int, norm: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = TokenNorm(norm, dim, "attention"), TokenNorm(norm, dim, "mlp")
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, causal: Tensor, padding: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """A pre-norm character-level transformer; ``padding`` marks pad positions ``(N, T)``."""

    def __init__(self, vocab: int, norm: str, dim: int = 64, layers: int = 2, heads: int = 4, max_len: int = 256):
        super().__init__()
        self.embed = nn.Embedding(vocab + 1, dim)  # the last id is padding
        self.pos = nn.Parameter(torch.randn(max_len, dim) / math.sqrt(dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, norm) for _ in range(layers))
        self.final_norm = TokenNorm(norm, dim, "final")
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:t]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), diagonal=1)
        for block in self.blocks:
            x = block(x, causal, padding)
        return self.head(self.final_norm(x))
