"""Small models for the lab. Every one takes its normalization by name through :func:`normlab.create_norm`, so
``--norms`` accepts any registered method, including ones added after the lab was written."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import nn as nl
from ..registry import canonical_name, create_norm

__all__ = ["ConvNet", "CharTransformer", "MeanOnlyBatchNorm", "make_norm", "NotApplicable"]


class NotApplicable(ValueError):
    """A norm that cannot be used in a model (e.g. InstanceNorm on token features); the study records why."""


class MeanOnlyBatchNorm(nn.Module):
    """Mean-only BatchNorm (Salimans & Kingma 2016): subtract the batch mean per channel, add a bias; no scaling.

    Used with Weight Normalization, which already fixes the scale. Keeps a running mean for eval.
    """

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        dims = (0,) + tuple(range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            mean = x.mean(dim=dims)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
        else:
            mean = self.running_mean
        return x - mean.view(shape) + self.bias.view(shape)


def _default_groups(channels: int) -> int:
    return max(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and g <= max(1, channels // 2))


def make_norm(name: str, channels: int, spatial_dims: int) -> nn.Module:
    """``create_norm`` with lab defaults (GroupNorm: 8 groups on 32 channels, as the paper's 32 on 64+), plus the
    lab-only ``meanonly`` (mean-only BN for the Weight Normalization study)."""
    if name == "meanonly":
        return MeanOnlyBatchNorm(channels)
    grouped = canonical_name(name) in ("group", "ws")
    kwargs = {"num_groups": _default_groups(channels) if channels < 64 else 32} if grouped else {}
    try:
        return create_norm(name, channels, spatial_dims=spatial_dims, **kwargs)
    except ValueError as err:
        raise NotApplicable(str(err)) from err


class ConvNet(nn.Module):
    """conv-norm-ReLU blocks (stride 2 after the first), global average pool, linear head. 1-d or 2-d by the data.

    With ``weight_norm=True`` every conv and the head are weight-normalized (Salimans & Kingma).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int,
        norm: str = "batch",
        width: int = 32,
        depth: int = 3,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        conv = self._conv(norm, spatial_dims)
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            layers += [
                conv(c, width, 3, stride=1 if i == 0 else 2, padding=1),
                make_norm(norm, width, spatial_dims),
                nn.ReLU(),
            ]
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1) if spatial_dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)
        if weight_norm:
            for m in list(self.features) + [self.head]:
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    nl.weight_norm(m)

    @staticmethod
    def _conv(norm: str, spatial_dims: int):
        """The registry's conv for weight-level methods (Weight Standardization, Spectral Norm), else nn.ConvNd."""
        from ..registry import conv_layer

        if norm != "meanonly":
            try:
                special = conv_layer(norm, spatial_dims)
            except ValueError as err:
                raise NotApplicable(str(err)) from err
            if special is not None:
                return special
        return {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class TokenNorm(nn.Module):
    """A norm over the feature dim of ``(N, T, D)`` tokens: built for vectors and applied to the flattened tokens,
    so BatchNorm takes statistics over every token of the batch, padding included (the naive use PowerNorm studies)."""

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        self.norm = make_norm(name, dim, spatial_dims=0)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        return self.norm(x.reshape(n * t, d)).reshape(n, t, d)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, norm: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = TokenNorm(norm, dim), TokenNorm(norm, dim)
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
        self.final_norm = TokenNorm(norm, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:t]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), diagonal=1)
        for block in self.blocks:
            x = block(x, causal, padding)
        return self.head(self.final_norm(x))
