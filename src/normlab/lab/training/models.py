"""Small models for the lab. Every one takes its normalization by name through :func:`normlab.create_norm`, so
``--norms`` accepts any registered method, including ones added after the lab was written."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ... import nn as nl
from ...registry import conv_layer, create_norm, create_packed_norm, get_method
from .channel_major import (
    GROUP_NORMS,
    ROW_LAYOUT_NORMS,
    SplitNorm,
    hooked,
    kernel_takes,
    norm_act_channel_major,
    norm_act_taps,
    order_free,
    packed_norm,
)
from .channel_major_kernel import channel_major_kernel
from .conv_forms import Im2Col, ParityConv, first_conv_columns, tap_rows

__all__ = [
    "ConvNet",
    "PackedLinear",
    "make_norm",
    "norm_kwargs",
    "NotApplicable",
    "uses_weight_norm",
    "PACKED_FORMS",
    "MATMUL_MIN_BATCH",
    "PACK_EXAMPLES",
    "pack_size",
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


def norm_kwargs(name: str, channels: int) -> dict[str, Any]:
    """Lab defaults: a grouped method gets 32 groups from 64 channels up, else the most groups of at least 2
    channels each (16 groups of 2 on the lab's 32 channels)."""
    if not get_method(name).grouped:
        return {}
    return {"num_groups": _default_groups(channels) if channels < 64 else 32}


def make_norm(
    name: str,
    channels: int,
    spatial_dims: int,
    copies: int | None = None,
    options: dict[str, Any] | None = None,
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


def run_groups(norms: Sequence[str], options: Sequence[dict[str, Any] | None]) -> list[list[int]]:
    """Consecutive runs with the same norm and options: the parts of a mixed pack's norm layers."""
    groups: list[list[int]] = []
    for i, key in enumerate(zip(norms, options, strict=True)):
        if groups and key == (norms[groups[-1][0]], options[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# The packed ConvNet's two forms (``ConvNet.packed_form``): "grouped" runs each conv as one grouped convolution
# (groups=K) over ``(N, K*C, L)`` maps; "matmul" runs it as one batched matrix product per layer, the K nets' weights
# ``(K, C_out, C_in*3)`` times their im2col columns ``(K, C_in*3, L_out*N)``, or, where every stride-2 conv halves its
# length evenly, without columns (positions stored even-then-odd, conv_forms), with activations kept channel-major
# ``(K, C, L, N)`` between layers (the BatchNorm of K nets is then one norm over rows, their GroupNorm one over
# contiguous blocks, each with the conv's bias folded in: channel_major). Where the compiled norm kernel runs, it
# writes the next stride-2 conv's taps ``(K, C*3, L/2*N)`` (conv_forms.tap_rows), and that conv is one product; else
# ParityConv. "auto" takes "matmul" at every batch for BatchNorm and no norm, and for GroupNorm and LayerNorm where the
# kernel runs (float32 on the CPU, not NORMLAB_NO_KERNELS=1), from MATMUL_MIN_BATCH examples on the composites, and
# "grouped" otherwise. Measured on one core (2026-12-07, CPU time, 2 shared cores at load 4.5-6), matmul/grouped
# model-steps/s with the kernel and its taps, two runs: GN 1.35x-1.36x, 1.53x-1.57x, 1.79x-1.94x, 2.02x-2.03x at batch
# 2, 4, 8, 16 (16 nets), 1.21x-1.25x, 1.44x-1.48x, 1.72x-1.83x, 1.97x-2.15x at pack_size's 64, 64, 32, 32 nets; LN
# 1.30x-1.45x, 1.50x-1.53x, 1.66x-1.73x, 1.92x-1.96x (16 nets), 1.15x-1.23x, 1.42x-1.44x, 1.74x-1.79x, 1.92x-2.00x
# (pack_size); batch 32, 16 nets, three runs: BN 2.14x-2.44x, GN 2.00x-2.09x, LN 2.03x-2.06x (benchmarks/RESULTS.md).
# On the composites (before the kernel, 2026-12-06): GN 0.84x, 0.93x at batch 2, 8, about 1.1x at 32; LN 0.79x, 0.92x,
# about 1.0x; BN 1.14x and 1.59x at batch 2 and 32. InstanceNorm (affine, no running statistics) runs on the kernel
# as a GroupNorm of one channel a group, and a mixed pack (SplitNorm) runs each part on its runs' slice of the maps:
# "auto" takes "matmul" for InstanceNorm packs and mixed packs of the kernel's norms where the kernel runs. Measured
# 2026-12-07 (one core, CPU time, the machine shared with a compare run), matmul/grouped ms a step: InstanceNorm 20
# nets 1.22x, 1.28x at batch 1, 2, 16 nets 2.30x at batch 32; BN, GN, LN and IN x 5 seeds (20 nets) 1.26x, 1.57x at
# batch 1, 2 (quiet machine, with the whole mixed layer in one kernel call each way: 3.03 / 3.83 and 3.40 / 5.34 ms;
# one call a part took 0.88x at batch 1), 1.46x, 2.15x at 8, 32 (one call a part). Batch Renorm runs on the kernel
# as BatchNorm with its r and d folded into the affine: the online study's pack (BN, Batch Renorm, LN, GN x 5 seeds)
# 3.34 / 4.55 ms at batch 1 (1.36x; quiet, 2026-12-07). Other norms take their usual (N, K*C, L) maps in the matmul
# form (a copy each way), correct but unmeasured, so "auto" keeps them, and mixed packs holding them, grouped.
PACKED_FORMS = ("auto", "grouped", "matmul")
MATMUL_MIN_BATCH = 32
TAPS_MIN_BATCH = 1  # from this batch the kernel writes the next conv's taps: 1.11x-1.34x at batch 2-32 (RESULTS.md)
PACK_EXAMPLES = 512  # examples a step that a pack of the lab's ConvNets holds at its measured best (see pack_size)
SMALL_BATCH = 4  # up to this batch, packs of ``most`` runs; above it, at most 32


def pack_size(batch: int, most: int = 64, least: int = 4) -> int:
    """How many runs of the lab's ConvNet (width 32, depth 4, MNIST-1D) to pack at ``batch`` examples a step:
    ``most`` up to SMALL_BATCH examples, else about PACK_EXAMPLES examples a pack step, at most 32, within
    ``least .. most``. Measured on one core (2026-12-06, the form "auto" picks; after the matmul form's
    ParityConv), the best pack sizes were 64-128 at batch 2 (BN, GN, LN), 32 at batch 8 (LN; BN level from 32 to 64),
    32 at 16, 16-32 at 32 and 16 at 64 (BN, LN; 8 within 6%), 2-4 at batch 128 (before ParityConv): throughput
    grows with K while per-operation overhead dominates, and falls once a pack's activations (K*batch*32 channels*40
    positions) outgrow the core's cache. The rule: 64 at batch 1-4, 32 at 8 and 16, 16 at 32, 8 at 64, 4 from 128
    up."""
    if batch < 1:
        raise ValueError(f"pack_size: batch must be at least 1, got {batch}")
    if batch <= SMALL_BATCH:
        return max(least, most)
    return max(least, min(most, 32, PACK_EXAMPLES // batch))


def has_kernel() -> bool:
    """Whether the compiled channel-major norm kernel is available (compiled on the first call)."""
    return channel_major_kernel() is not None


def _is_plain_conv1d(conv: nn.Module) -> bool:
    """An nn.Conv1d whose weight is itself (or Weight Normalization's, read through the parametrization)."""
    base = parametrize.type_before_parametrizations(conv)
    if base is not nn.Conv1d or hooked(conv):
        return False
    if parametrize.is_parametrized(conv):
        return set(cast(nn.ModuleDict, conv.parametrizations).keys()) == {"weight"} and all(
            isinstance(p, nl.WeightNorm)
            for p in cast(parametrize.ParametrizationList, cast(nn.ModuleDict, conv.parametrizations).weight)
        )
    return True


class _PlainConv(Protocol):
    """What the matmul form reads of a conv that :func:`_is_plain_conv1d` accepts (an ``nn.Conv1d`` with a bias)."""

    out_channels: int
    stride: tuple[int, ...]
    weight: Tensor
    bias: Tensor


class ConvNet(nn.Module):
    """conv-norm-ReLU blocks (stride 2 after the first), global average pool, linear head. 1-d or 2-d by the data.
    A norm with its activation built in (FRN + TLU, EvoNorm) takes the ReLU's place, as in its paper.

    With ``weight_norm=True`` every conv and the head are weight-normalized (Salimans & Kingma).

    With ``copies=K`` it is K independent nets packed side by side (see :mod:`normlab.lab.training.packed`): grouped
    convs, the norm's packed form and a per-copy head, with the same state_dict keys as one net and every tensor the
    K nets' tensors concatenated. Input ``(N, K*C_in, *S)``, output ``(N, K, classes)``. ``norm`` (and
    ``norm_options``) may give one entry per copy: runs of several norms then share one pack, each norm layer a
    :class:`SplitNorm` of the norms' packed forms.

    ``packed_form`` (packed nets only; an attribute, so it may change between steps): "grouped" convolutions,
    "matmul" (each conv a batched matrix product over the K nets, activations channel-major; 1-d nets of plain or
    weight-normalized convs, else grouped), or "auto": matmul where measured faster (BatchNorm and no norm at every
    batch, GroupNorm, LayerNorm, InstanceNorm and Batch Renorm at every batch where the compiled channel-major kernel
    runs, else (GroupNorm, LayerNorm) from :data:`MATMUL_MIN_BATCH` examples, mixed packs of these norms where the
    kernel runs; see :meth:`uses_matmul`). Both forms compute the same function with the same parameters and state,
    up to float rounding.
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
        norm_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        packed_form: str = "auto",
    ) -> None:
        super().__init__()
        if packed_form not in PACKED_FORMS:
            raise ValueError(f"ConvNet: packed_form must be one of {', '.join(PACKED_FORMS)}, got {packed_form!r}")
        self.packed_form = packed_form
        k = copies or 1
        norms = [norm] * k if isinstance(norm, str) else list(norm)
        options = [norm_options] * k if norm_options is None or isinstance(norm_options, dict) else list(norm_options)
        if len(norms) != k or len(options) != k:
            raise ValueError(
                f"ConvNet: one norm and one options entry per copy ({k}), got {len(norms)}, {len(options)}"
            )
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
            layers += [
                conv(k * c, k * width, 3, stride=1 if i == 0 else 2, padding=1, groups=k),
                norm_layer,
                nn.Identity() if fused else nn.ReLU(),
            ]
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
    @cache
    def _conv(norm: str, spatial_dims: int) -> Callable[..., nn.Module]:
        """The registry's conv for weight-level methods (Weight Standardization, Spectral Norm), else nn.ConvNd."""
        try:
            special = conv_layer(norm, spatial_dims)
        except ValueError as err:
            raise NotApplicable(str(err)) from err
        if special is not None:
            return special
        return {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]

    def blocks(self) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
        """The blocks' convs, norm layers and activations (``features`` holds them in that order, block by
        block)."""
        layers = list(self.features)
        return layers[0::3], layers[1::3], layers[2::3]

    def plain_blocks(self) -> tuple[list[_PlainConv], list[nn.Module], list[nn.Module]]:
        """:meth:`blocks`, the convs as the matmul form reads them (where :meth:`uses_matmul` accepted them)."""
        convs, norms, acts = self.blocks()
        return cast("list[_PlainConv]", convs), norms, acts

    def uses_matmul(self, batch: int, kernel: bool | None = None) -> bool:
        """Whether a forward over ``batch`` examples takes the matmul form (see ``packed_form``); ``kernel``: whether
        the compiled channel-major norm kernel runs the norms (default: it is available and the parameters are
        float32 on the CPU), which makes the matmul form the faster one for GroupNorm at small batches too."""
        if self.copies is None or self.packed_form == "grouped":
            return False
        if self.packed_form == "auto":
            layers = self.blocks()[1]
            split = [m for m in layers if isinstance(m, SplitNorm) and not hooked(m)]
            norms = [p for m in layers for p in (m.parts if m in split else [m])]
            rows = all(isinstance(m, nn.Identity) or type(m) in ROW_LAYOUT_NORMS for m in norms)
            groups = all(isinstance(m, nn.Identity) or type(m) in ROW_LAYOUT_NORMS + GROUP_NORMS for m in norms)
            kernel_norms = all(isinstance(m, nn.Identity) or kernel_takes(m) for m in norms)
            if kernel_norms and not rows and kernel is None:
                weight = self.features[0].weight
                kernel = weight.device.type == "cpu" and weight.dtype == torch.float32 and has_kernel()
            if not (rows or (groups and batch >= MATMUL_MIN_BATCH) or (kernel_norms and kernel)):
                return False
        convs = self.blocks()[0]
        return all(
            _is_plain_conv1d(m)
            and m.kernel_size == (3,)
            and m.padding == (1,)
            and m.dilation == (1,)
            and m.stride in ((1,), (2,))
            and m.groups == self.copies
            and m.bias is not None
            and m.padding_mode == "zeros"
            for m in convs
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.uses_matmul(x.shape[0], None if x.device.type == "cpu" and x.dtype == torch.float32 else False):
            return self._forward_matmul(x)
        if self.copies is None or hooked(self.features):
            return self.head(self.pool(self.features(x)).flatten(1))
        return self.head(self.pool(self._features_packed(x)).flatten(1))

    def _features_packed(self, x: Tensor) -> Tensor:
        """The packed net's features in the grouped form: ``self.features`` with each norm layer through
        :func:`~normlab.lab.training.channel_major.packed_norm` (InstanceNorm as one GroupNorm op)."""
        for i, layer in enumerate(self.features):
            x = packed_norm(layer, x) if i % 3 == 1 else layer(x)
        return x

    def parity_form(self, length: int) -> bool:
        """Whether the matmul form runs inputs of ``length`` positions without columns: a stride-1 first conv, then
        stride-2 ones on a length that halves evenly at each, and norms that take the positions in any order
        (:func:`~normlab.lab.training.channel_major.order_free`), the maps stored in
        :func:`~normlab.lab.training.conv_forms.position_order`."""
        convs, norms, _ = self.plain_blocks()
        halvings = len(convs) - 1
        strides = [m.stride[0] for m in convs]
        return strides == [1] + [2] * halvings and length % 2**halvings == 0 and all(order_free(m) for m in norms)

    def _forward_matmul(self, x: Tensor) -> Tensor:
        """The packed forward as batched matrix products: input ``(N, K*C_in, L)``, output ``(N, K, classes)``.
        A stride-1 first conv and stride-2 ones on a length that halves evenly take :class:`ParityConv` (positions
        stored in :func:`position_order`, no im2col columns), any other length :class:`Im2Col`."""
        k, n = cast(int, self.copies), x.shape[0]  # a packed net (uses_matmul)
        h = x.reshape(n, k, -1, x.shape[-1]).permute(1, 2, 3, 0)  # (K, C, L, N): a view
        convs, norms, acts = self.plain_blocks()
        halvings = len(convs) - 1
        parity = self.parity_form(x.shape[-1])
        taps: Tensor | None = None  # the next conv's taps (K, C*3, L/2*N), where the norm's kernel wrote them
        for i, (conv, norm, act) in enumerate(zip(convs, norms, acts, strict=True)):
            c_out = conv.out_channels // k
            if taps is not None:  # the stride-2 conv: one product in the weight's own layout
                y = torch.bmm(conv.weight.view(k, c_out, taps.shape[1]), taps)
            elif parity and i > 0:
                y = ParityConv.apply(h.contiguous(), conv.weight, halvings - i + 1)
            else:
                cols = first_conv_columns(h, halvings) if parity else Im2Col.apply(h, conv.stride[0])
                y = torch.bmm(conv.weight.view(k, c_out, h.shape[1] * 3), cols)
            taps = None
            if parity and i < halvings and n >= TAPS_MIN_BATCH:  # a stride-2 conv next: its taps, if the kernel runs
                taps = norm_act_taps(norm, act, y, n, conv.bias, tap_rows(y.shape[2] // n, halvings - i))
            if taps is None:
                h = norm_act_channel_major(norm, act, y, n, conv.bias)  # the conv's bias: folded into the norm
        pooled = h.mean(2)  # (K, C, N): the average pool (of any order of the positions)
        head = self.head
        if isinstance(head, PackedLinear) and not hooked(head):  # logits (K, classes, N): no layout copies
            w, b = head.weight.view(k, head.out_features, -1), head.bias.view(k, -1, 1)
            return torch.baddbmm(b, w, pooled).permute(2, 0, 1)
        return head(pooled.permute(2, 0, 1).reshape(n, -1))


class PackedLinear(nn.Module):
    """K independent ``Linear(in, out)`` layers: weight ``(K*out, in)``, bias ``(K*out,)``;
    ``(N, K*in) -> (N, K, out)``."""

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
        return torch.baddbmm(self.bias.view(k, 1, o), x.view(-1, k, i).transpose(0, 1), w.transpose(1, 2)).transpose(
            0, 1
        )
