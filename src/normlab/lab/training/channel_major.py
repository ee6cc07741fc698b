"""The norm layers of the packed ConvNet's matmul form (``ConvNet.packed_form`` "matmul"), on channel-major maps
``(K, C, L, N)`` (the batch last), with the conv's bias folded in where the norm allows: BatchNorm removes a
per-channel constant (the bias enters only its running mean), GroupNorm and LayerNorm (a GroupNorm of one group a
net) subtract it with the group mean, so the conv is a plain product and its output is written once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import cast

import torch
from torch import Tensor, nn

from ... import functional as NF
from ...nn import batch_variants as nl_batch_variants
from ...nn import batchnorm as nl_batchnorm
from ...nn import instancenorm as nl_instancenorm
from ...nn import normalization as nl_normalization
from .channel_major_composites import GroupNormChannelMajor, RowBatchNorm
from .channel_major_kernel import (
    NO_TABLE,
    GroupNormReLU,
    RowBatchNormReLU,
    SplitNormReLU,
    channel_major_kernel,
)

__all__ = [
    "norm_act_channel_major",
    "norm_act_taps",
    "order_free",
    "hooked",
    "packed_norm",
    "SplitNorm",
    "norm_parts",
    "kernel_takes",
    "KernelLayer",
    "kernel_cases",
    "kernel_layer",
    "layer_parts",
    "update_running_stats",
]

Table = tuple[Tensor, int]  # the kernel's output layout: dest (L, 2) and the output rows per channel (conv_forms)

# Norms that see channel-major rows ``(1, K*C, L*N)``: statistics per channel over the batch and positions, the rest
# elementwise, so the rows are the maps themselves. Every other norm gets ``(N, K*C, L)`` maps (one copy each way).
ROW_NORMS = (nn.BatchNorm1d, nl_batchnorm.BatchNorm1d)
# Batch Renorm: BatchNorm whose r and d (no gradient) fold into its affine, so it runs as BatchNorm's rows.
RENORM_NORMS = (nl_batch_variants.BatchRenorm1d,)
ROW_STAT_NORMS = (*ROW_NORMS, *RENORM_NORMS)
# Mean-only BatchNorm (no variance, no weight): its module runs on the rows, the conv's bias added first.
MEAN_ROW_NORMS = (nl_batch_variants.MeanOnlyBatchNorm,)
ROW_LAYOUT_NORMS = (*ROW_NORMS, *MEAN_ROW_NORMS)
GROUP_NORMS = (nn.GroupNorm, nl_normalization.GroupNorm)
INSTANCE_NORMS = (nn.InstanceNorm1d, nl_instancenorm.InstanceNorm1d)
# Norms whose output their backward does not read: the ReLU after them may run in place.
INPLACE_AFTER = (*ROW_STAT_NORMS, *MEAN_ROW_NORMS, *GROUP_NORMS, nn.Identity)


def hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward hooks (which must see its usual input, so it runs as itself)."""
    return bool(module._forward_pre_hooks or module._forward_hooks)


def order_free(norm: nn.Module) -> bool:
    """Whether ``norm`` (a packed ConvNet's norm layer) runs on channel-major maps in any order of their positions:
    no norm, BatchNorm, Batch Renorm, mean-only BatchNorm, GroupNorm or InstanceNorm without hooks (statistics over
    all positions, the rest elementwise), or a :class:`SplitNorm` of such parts."""
    if isinstance(norm, SplitNorm) and not hooked(norm):
        return all(order_free(part) for part in norm.parts)
    return isinstance(norm, nn.Identity) or (
        type(norm) in ROW_STAT_NORMS + MEAN_ROW_NORMS + GROUP_NORMS + INSTANCE_NORMS and not hooked(norm)
    )


def packed_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(x)`` for a packed net's norm layer over ``(N, K*C, L)`` maps. An affine InstanceNorm without running
    statistics runs as the GroupNorm of one channel a group (the same statistics, per example and channel over the
    positions): one ATen op each way, where ``instance_norm`` repeats its weight and bias over the batch and runs
    batch norm on a reshaped copy, several times the ops at a small batch. Equal up to float rounding."""
    if type(norm) in INSTANCE_NORMS and not hooked(norm):
        inorm = cast(nn.InstanceNorm1d, norm)
        if inorm.affine and not inorm.track_running_stats and x.dim() == 3 and x.shape[1] == inorm.num_features:
            return torch.group_norm(x, x.shape[1], inorm.weight, inorm.bias, inorm.eps)
    return norm(x)


class SplitNorm(nn.Module):
    """A mixed pack's norm layer: consecutive channel blocks, each the packed norm of one group of runs (runs of
    one norm). State dict keys ``parts.{g}.*``; ``run_groups`` says which runs each part holds. In the matmul form
    each part runs on its own runs' slice of the channel-major maps (:func:`norm_parts`)."""

    def __init__(self, parts: list[nn.Module], sizes: list[int], run_groups: list[list[int]]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.sizes = sizes
        self.run_groups = run_groups

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [packed_norm(part, chunk) for part, chunk in zip(self.parts, x.split(self.sizes, dim=1), strict=True)],
            dim=1,
        )


Part = tuple[nn.Module, Tensor, "Tensor | None"]  # a norm, the maps of its runs (K_part, C, L*N), their conv bias


def norm_parts(norm: nn.Module, y: Tensor, conv_bias: Tensor | None) -> list[Part]:
    """The norms that normalize channel-major maps ``y`` ``(K, C, L*N)``, each with its runs' maps and conv bias: a
    :class:`SplitNorm` (without hooks) one per part, its runs' slice of K (contiguous where ``y`` is); any other
    norm itself over all of ``y``."""
    if not isinstance(norm, SplitNorm) or hooked(norm):
        return [(norm, y, conv_bias)]
    runs = [len(g) for g in norm.run_groups]
    # split, not slices: its backward writes the parts' gradients into one tensor, where each slice's would add a
    # zero-filled one of the whole size
    maps = y.split(runs)
    biases = [None] * len(runs) if conv_bias is None else conv_bias.split([r * y.shape[1] for r in runs])
    return list(zip(norm.parts, maps, biases, strict=True))


def _kernel_for(*tensors: Tensor) -> ModuleType | None:
    """The compiled kernel where it takes these tensors (float32 on the CPU), else None (the ATen composite)."""
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return channel_major_kernel()
    return None


def _row_stats_apply(norm: nn.BatchNorm1d, rows: Tensor, conv_bias: Tensor | None) -> bool:
    """Whether :func:`_row_batch_norm` computes BatchNorm of these rows itself (training, running statistics)."""
    return (
        norm.training
        and norm.track_running_stats
        and norm.momentum is not None
        and norm.running_mean is not None
        and rows.dtype == torch.float32
        and rows.shape[2] > 1
        and norm.weight is not None
        and norm.bias is not None
        and conv_bias is not None
    )


def _row_batch_norm(
    norm: nn.BatchNorm1d, rows: Tensor, conv_bias: Tensor | None, relu: bool, table: Table | None = None
) -> tuple[Tensor, bool]:
    """BatchNorm of ``(1, C, M)`` rows (plus ``conv_bias`` per channel), each channel's statistics over its row, and
    whether the ReLU ran with it (``relu`` asks for it). In training with running statistics and a momentum it runs
    as the compiled kernel (:class:`~normlab.lab.training.channel_major_kernel.RowBatchNormReLU`, the ReLU fused,
    its output in ``table``'s layout where given) or, without one, :class:`RowBatchNorm`, and updates the running
    statistics as BatchNorm does (the bias in the mean, unbiased variance, ``num_batches_tracked``); otherwise it is
    ``norm`` itself. Batch Renorm runs as BatchNorm with its r and d in the affine (:func:`_renorm_affine`), its
    running statistics updated as its module does. ``table`` only where the kernel runs (:func:`_kernel_case`)."""
    _, c, m = rows.shape
    if not _row_stats_apply(norm, rows, conv_bias):
        return norm(rows if conv_bias is None else rows + conv_bias.view(1, c, 1)), False
    conv_bias = cast(Tensor, conv_bias)  # checked by _row_stats_apply, as the statistics below
    renorm = type(norm) in RENORM_NORMS
    weight, bias = (
        _renorm_affine(norm, *_renorm_corrections(norm, rows, conv_bias)) if renorm else (norm.weight, norm.bias)
    )
    kernel = _kernel_for(rows, conv_bias, weight, bias)
    if kernel is not None:
        dest, out_rows = table if table is not None else (NO_TABLE, 0)
        out, mean, var = RowBatchNormReLU.apply(
            rows.view(c, m), conv_bias, weight, bias, norm.eps, relu, kernel, dest, out_rows
        )
    else:
        out, mean, rstd = RowBatchNorm.apply(rows, conv_bias, weight, bias, norm.eps)
        var = rstd.reciprocal().square_().sub_(norm.eps)
    if not renorm:
        _update_running(norm, mean, var, conv_bias, m)
    return cast(Tensor, out), kernel is not None and relu


def _renorm_affine(norm: nn.Module, r: Tensor, d: Tensor) -> list[Tensor]:
    """Batch Renorm in training as BatchNorm's output with weight ``w * r`` and bias ``w * d + b``:
    ``w * ((x - mean_B) / std_B * r + d) + b``, r and d (no gradient) from the batch's statistics
    (:func:`_renorm_corrections`); the weight and bias keep their gradients through the products (the fused step
    takes them back through these by hand: ``fused_step._norm_grads``)."""
    weight, bias = cast(Tensor, norm.weight), cast(Tensor, norm.bias)
    return [weight * r, torch.addcmul(bias, weight, d)]


def _renorm_corrections(norm: nn.Module, rows: Tensor, conv_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Batch Renorm's r and d ``(C,)`` for ``(1, C, M)`` rows plus ``conv_bias``; counts the batch and updates the
    running statistics as the module's forward does (:meth:`~normlab.nn.BatchRenorm1d.corrections`)."""
    brn = cast(nl_batch_variants.BatchRenorm1d, norm)
    with torch.no_grad():
        mean, var = NF._channel_moments(rows)
        brn.num_batches_tracked.add_(1)
        return brn.corrections(mean + conv_bias, var, rows.shape[2])


def _update_running(norm: nn.BatchNorm1d, mean: Tensor, var: Tensor, conv_bias: Tensor, m: int) -> None:
    """BatchNorm's running statistics after a batch of ``m`` values a channel whose mean (less ``conv_bias``) and
    biased variance are ``mean``, ``var``: the bias in the mean, the variance unbiased, ``num_batches_tracked``."""
    momentum = cast(float, norm.momentum)
    with torch.no_grad():
        cast(Tensor, norm.running_mean).mul_(1 - momentum).add_(mean.view(-1) + conv_bias, alpha=momentum)
        unbiased = var.view(-1).mul(m / (m - 1))
        cast(Tensor, norm.running_var).mul_(1 - momentum).add_(unbiased, alpha=momentum)
        cast(Tensor, norm.num_batches_tracked).add_(1)


def _group_form(norm: nn.Module) -> tuple[int, Tensor, Tensor, float] | None:
    """``(groups, weight, bias, eps)`` of an affine GroupNorm (LayerNorm packs as one), or of an affine InstanceNorm
    without running statistics (a GroupNorm of one channel a group), without hooks; None for any other norm."""
    if hooked(norm) or not getattr(norm, "affine", False) or getattr(norm, "bias", None) is None:
        return None
    if type(norm) in GROUP_NORMS:
        gn = cast(nn.GroupNorm, norm)
        return gn.num_groups, gn.weight, gn.bias, gn.eps
    if type(norm) in INSTANCE_NORMS and not cast(nn.InstanceNorm1d, norm).track_running_stats:
        inorm = cast(nn.InstanceNorm1d, norm)
        return inorm.num_features, cast(Tensor, inorm.weight), cast(Tensor, inorm.bias), inorm.eps
    return None


def kernel_takes(norm: nn.Module) -> bool:
    """Whether the compiled kernel takes ``norm`` by its kind and options (BatchNorm, :func:`_group_form`'s norms);
    whether it runs also depends on the maps and the mode (:func:`_kernel_case`)."""
    return (type(norm) in ROW_STAT_NORMS and not hooked(norm)) or _group_form(norm) is not None


def _kernel_case(norm: nn.Module, y: Tensor, conv_bias: Tensor | None) -> str | None:
    """Which compiled kernel runs ``norm(y + conv_bias)`` (a ReLU after it may run in the same pass): "row"
    (BatchNorm in training), "group" (:func:`_group_form`: GroupNorm, LayerNorm, InstanceNorm), or None (the
    composites, another norm, hooks, no bias, not float32 on the CPU)."""
    if conv_bias is None or hooked(norm):
        return None
    if type(norm) in ROW_STAT_NORMS:
        bn = cast(nn.BatchNorm1d, norm)
        rows = y.view(1, -1, y.shape[-1])
        ok = _row_stats_apply(bn, rows, conv_bias) and _kernel_for(y, conv_bias, bn.weight, bn.bias) is not None
        return "row" if ok else None
    form = _group_form(norm)
    if form is not None and _kernel_for(y, conv_bias, form[1], form[2]) is not None:
        return "group"
    return None


def _kernel_norm_act(
    norm: nn.Module, case: str, y: Tensor, n: int, conv_bias: Tensor, relu: bool, table: Table | None
) -> Tensor:
    """``norm(y + conv_bias)`` (and the ReLU, with ``relu``) by the compiled kernel (``case`` of
    :func:`_kernel_case`), in ``table``'s layout where given, else ``y``'s; the output as the kernel writes it."""
    k, c, m = y.shape
    if case == "row":
        out, _ = _row_batch_norm(cast(nn.BatchNorm1d, norm), y.view(1, k * c, m), conv_bias, relu, table)
        return out
    groups, weight, bias, eps = cast("tuple[int, Tensor, Tensor, float]", _group_form(norm))
    dest, out_rows = table if table is not None else (NO_TABLE, 0)
    x = y.contiguous().view(groups, -1, n)
    return GroupNormReLU.apply(x, conv_bias, weight, bias, eps, relu, channel_major_kernel(), dest, out_rows)


# Whether a mixed pack's parts run as one SplitNormReLU node where the kernel takes every part (False: a node a
# part and a concatenation; the same kernel calls, equal bit for bit; the tests compare the two).
SPLIT_FUSED = True


@dataclass(frozen=True, kw_only=True)
class KernelLayer:
    """A norm layer as the compiled kernel's ``split_forward`` takes it: its parts (a :class:`SplitNorm`'s, or the
    norm itself, one part of all K runs), each part's ``runs``, ``groups`` (0: BatchNorm rows; else GroupNorm's
    groups over the part's channels), ``eps``, and ``params`` (each part's weight and bias, Batch Renorm's with its r
    and d folded in); ``renorm``: each part's ``(r, d)`` where it is a Batch Renorm, else None."""

    parts: list[nn.Module]
    runs: list[int]
    groups: list[int]
    eps: list[float]
    params: list[Tensor]
    renorm: list[tuple[Tensor, Tensor] | None]


def layer_parts(norm: nn.Module, k: int) -> tuple[list[nn.Module], list[int]]:
    """A norm layer's parts and each one's number of runs: a :class:`SplitNorm`'s, or the norm itself over all
    ``k`` runs."""
    if isinstance(norm, SplitNorm):
        return list(norm.parts), [len(group) for group in norm.run_groups]
    return [norm], [k]


def kernel_cases(norm: nn.Module, y: Tensor, conv_bias: Tensor | None) -> list[str] | None:
    """Each part's :func:`_kernel_case` where the compiled kernel runs every part of the norm layer ``norm`` over
    channel-major maps like ``y`` ``(K, C, L*N)`` (their dtype, device and last size are what counts) plus
    ``conv_bias``; None where it runs some part not, or the layer has hooks. No side effects."""
    if hooked(norm) or conv_bias is None:
        return None
    # a part's case depends on its norm and the maps' dtype and device, not on its slice: checked on all of y
    cases = [_kernel_case(part, y, conv_bias) for part in layer_parts(norm, y.shape[0])[0]]
    return None if None in cases else cast("list[str]", cases)


def kernel_layer(norm: nn.Module, cases: list[str], y: Tensor, conv_bias: Tensor) -> KernelLayer:
    """The kernel's arguments for the norm layer ``norm`` over contiguous channel-major maps ``y`` ``(K, C, L*N)``
    whose parts' cases are ``cases`` (:func:`kernel_cases`). A Batch Renorm part's r and d are computed here from
    ``y``, which counts its batch and updates its running statistics (:func:`_renorm_corrections`)."""
    parts, runs = layer_parts(norm, y.shape[0])
    c, m = y.shape[1], y.shape[2]
    groups: list[int] = []
    eps: list[float] = []
    params: list[Tensor] = []
    renorm: list[tuple[Tensor, Tensor] | None] = []
    k0 = 0
    for part, case, count in zip(parts, cases, runs, strict=True):
        correction = None
        if case == "row":
            bn = cast(nn.BatchNorm1d, part)
            groups.append(0)
            eps.append(bn.eps)
            if type(part) in RENORM_NORMS:
                rows = y[k0 : k0 + count].view(1, count * c, m)
                correction = _renorm_corrections(part, rows, conv_bias[k0 * c : (k0 + count) * c])
                params += _renorm_affine(part, *correction)
            else:
                params += [bn.weight, bn.bias]
        else:
            form = cast("tuple[int, Tensor, Tensor, float]", _group_form(part))
            groups.append(form[0])
            eps.append(form[3])
            params += [form[1], form[2]]
        renorm.append(correction)
        k0 += count
    return KernelLayer(parts=parts, runs=runs, groups=groups, eps=eps, params=params, renorm=renorm)


def update_running_stats(layer: KernelLayer, stats: Sequence[Tensor], conv_bias: Tensor, c: int, m: int) -> None:
    """Each BatchNorm part's running statistics after ``split_forward`` returned ``stats`` (the mean and biased
    variance of each row part, in order) over maps of ``c`` channels a run and ``m`` values a channel; Batch Renorm
    updated its own in :func:`kernel_layer`."""
    stats = list(stats)
    k0 = 0
    for part, count, group in zip(layer.parts, layer.runs, layer.groups, strict=True):
        if group == 0:
            mean, var = stats.pop(0), stats.pop(0)
            if type(part) not in RENORM_NORMS:
                bias = conv_bias.detach()[k0 * c : (k0 + count) * c]
                _update_running(cast(nn.BatchNorm1d, part), mean, var, bias, m)
        k0 += count


def _split_kernel(
    norm: nn.Module, y: Tensor, n: int, conv_bias: Tensor | None, relu: bool, table: Table | None
) -> Tensor | None:
    """``relu(norm(y + conv_bias))`` of a :class:`SplitNorm` (without hooks) whose every part the compiled kernel
    runs (:func:`kernel_cases`), as one :class:`~normlab.lab.training.channel_major_kernel.SplitNormReLU` (its
    output, flat per run ``(K, C * R * N)``, R ``table``'s rows or L), the "row" parts' running statistics updated;
    None for any other norm (then a call a part, :func:`norm_parts`). ``relu`` False: without the ReLU."""
    if not isinstance(norm, SplitNorm):
        return None
    cases = kernel_cases(norm, y, conv_bias)
    if cases is None or conv_bias is None:
        return None
    y = y.contiguous()
    layer = kernel_layer(norm, cases, y, conv_bias)
    dest, out_rows = table if table is not None else (NO_TABLE, 0)
    kernel = channel_major_kernel()
    out, *stats = SplitNormReLU.apply(
        y, conv_bias, n, layer.runs, layer.groups, layer.eps, relu, kernel, dest, out_rows, *layer.params
    )
    update_running_stats(layer, stats, conv_bias, y.shape[1], y.shape[2])
    return cast(Tensor, out)


def norm_act_taps(
    norm: nn.Module, act: nn.Module, y: Tensor, n: int, conv_bias: Tensor | None, table: Table
) -> Tensor | None:
    """``act(norm(y + conv_bias))`` as :func:`norm_act_channel_major` computes it, written by the compiled kernel
    straight into the next stride-2 conv's taps ``(K, C*3, L/2*N)`` (``table``:
    :func:`~normlab.lab.training.conv_forms.tap_rows` of the maps' length; row ``c*3 + t`` tap t of channel c, the
    conv weight's order); None where the kernel does not run every part of this norm (:func:`norm_parts`,
    :func:`_kernel_case`) or the activation is neither a ReLU nor none (then :func:`norm_act_channel_major` and a
    ParityConv). Forward one kernel call a part, backward one: the gradient of an odd position the sum of its two
    taps', added as the kernel reads it."""
    if not isinstance(act, (nn.ReLU, nn.Identity)):
        return None
    k, c, length = y.shape[0], y.shape[1], y.shape[2] // n
    relu = isinstance(act, nn.ReLU)
    fused = _split_kernel(norm, y, n, conv_bias, relu, table) if SPLIT_FUSED else None
    if fused is not None:
        return fused.view(k, c * 3, length // 2 * n)
    parts = norm_parts(norm, y, conv_bias)
    cases = [_kernel_case(part, yp, bias) for part, yp, bias in parts]
    if None in cases:
        return None
    outs = [
        _kernel_norm_act(part, cast(str, case), yp, n, cast(Tensor, bias), relu, table)
        for (part, yp, bias), case in zip(parts, cases, strict=True)
    ]
    out = outs[0] if len(outs) == 1 else torch.cat([o.view(-1) for o in outs])
    return out.view(k, c * 3, length // 2 * n)


def norm_act_channel_major(norm: nn.Module, act: nn.Module, y: Tensor, n: int, conv_bias: Tensor | None) -> Tensor:
    """``act(norm(y + conv_bias))`` (a packed norm layer over ``(N, K*C, L)`` and its activation) applied to
    channel-major maps ``y`` ``(K, C, L*N)`` (the conv's output without its bias, batch last); returns
    ``(K, C, L, N)`` (a view when the norm took the other layout). A :class:`SplitNorm` runs each part on its runs'
    slice of K (:func:`norm_parts`). BatchNorm, GroupNorm (LayerNorm packs as one) and InstanceNorm without running
    statistics run on the channel-major maps with the bias folded in: through the compiled kernel, which also runs
    a ReLU after them in the same pass (:mod:`~normlab.lab.training.channel_major_kernel`), or, without it
    (``NORMLAB_NO_KERNELS=1``, a failed compile), the ATen composites
    (:mod:`~normlab.lab.training.channel_major_composites`; InstanceNorm: its module). Mean-only BatchNorm's module
    takes the rows ``(1, K*C, L*N)``, the bias added first. Any other norm, or one with hooks, gets ``(N, K*C, L)``
    maps through its module, a copy each way. A ReLU after a norm whose backward does not read its output runs in
    place, on the output itself (not on a view of it, which autograd would copy back)."""
    fused = None
    if SPLIT_FUSED and isinstance(act, (nn.ReLU, nn.Identity)):  # the kernel runs no other activation
        fused = _split_kernel(norm, y, n, conv_bias, isinstance(act, nn.ReLU), None)
    if fused is not None:
        return fused.view(y.shape[0], y.shape[1], -1, n)
    parts = norm_parts(norm, y, conv_bias)
    if len(parts) > 1:
        return torch.cat([_norm_act_one(part, act, yp, n, bias) for part, yp, bias in parts])
    return _norm_act_one(norm, act, y, n, conv_bias)


def _norm_act_one(norm: nn.Module, act: nn.Module, y: Tensor, n: int, conv_bias: Tensor | None) -> Tensor:
    """:func:`norm_act_channel_major` of one norm (not a :class:`SplitNorm`'s parts)."""
    k, c, length = y.shape[0], y.shape[1], y.shape[2] // n
    relu = isinstance(act, nn.ReLU)
    case = _kernel_case(norm, y, conv_bias)
    restore = False  # whether the norm took (N, K*C, L) maps
    if case is not None:
        out = _kernel_norm_act(norm, case, y, n, cast(Tensor, conv_bias), relu, None)
    elif type(norm) in ROW_STAT_NORMS and not hooked(norm):
        out, _ = _row_batch_norm(cast(nn.BatchNorm1d, norm), y.view(1, k * c, length * n), conv_bias, False)
    elif (
        type(norm) in GROUP_NORMS
        and _group_form(norm) is not None
        and conv_bias is not None
        and y.dtype == torch.float32
    ):
        gn = cast(nn.GroupNorm, norm)
        out = GroupNormChannelMajor.apply(y.view(gn.num_groups, -1, length, n), conv_bias, gn.weight, gn.bias, gn.eps)
    else:
        if conv_bias is not None:
            y = y + conv_bias.view(k, c, 1)
        if isinstance(norm, nn.Identity):
            out = y
        elif type(norm) in MEAN_ROW_NORMS and not hooked(norm):  # its module on the rows
            out = norm(y.view(1, k * c, length * n))
        else:
            out = packed_norm(norm, y.view(k, c, length, n).permute(3, 0, 1, 2).reshape(n, k * c, length))
            restore = True
    if relu and case is None:  # with the kernel, the ReLU ran in its pass
        out = torch.relu_(out) if type(norm) in INPLACE_AFTER else torch.relu(out)
    elif not relu and not isinstance(act, nn.Identity):
        out = act(out)
    if restore:
        return out.view(n, k, c, length).permute(1, 2, 3, 0)
    return out.view(k, c, length, n)
