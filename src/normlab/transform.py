"""Whole-model tools: fold eval BatchNorm into the conv before it, freeze BatchNorm, swap one norm for another, and
optimizer groups that exempt norm parameters from weight decay.

Each works on any ``nn.Module`` (torch's, timm's, torchvision's, Hugging Face's) and says what it changed and what
it could not, with the reason, instead of skipping in silence.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import nn

from . import nn as nl
from .convert import looks_like_norm
from .nn.norm_classes import NORM_CLASSES, NORM_PARTS
from .registry import create_norm, get_method

__all__ = ["FoldReport", "fold_batchnorm", "freeze_batchnorm", "swap", "SwapReport", "param_groups", "is_norm"]

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, nl.FrozenBatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# torch's norm classes, by their bases (a third-party subclass is a norm too), and every normlab norm class by the
# one list of them (a normlab class whose name lacks "Norm", BatchRenorm2d say, is not found by its name)
_NORM_BASES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    *NORM_CLASSES,
    *NORM_PARTS,
)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: torch's, normlab's, or a third-party class whose name says so
    (``LlamaRMSNorm``, timm's ``LayerNorm2d``, torchvision's ``FrozenBatchNorm2d``...)."""
    return isinstance(module, _NORM_BASES) or looks_like_norm(module)


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` folded (``(conv, norm)`` module names) and what it left, with the reason."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (norm name, reason)
    traced: bool = True

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} BatchNorm layer(s) into the conv/linear before them"]
        lines += [f"  {norm} -> {conv}" for conv, norm in self.folded]
        if self.skipped:
            lines.append(f"left {len(self.skipped)}:")
            lines += [f"  {norm}: {reason}" for norm, reason in self.skipped]
        return "\n".join(lines)


class _EvalBatchNorm(Protocol):
    """What folding reads of a BatchNorm (torch's, normlab's, frozen) that :func:`_why_not` passed."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float
    weight: torch.Tensor | None
    bias: torch.Tensor | None


def _fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """``layer`` followed by eval ``bn`` as one layer (a copy of ``layer`` with new weight and bias)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    fused = copy.deepcopy(layer)
    transpose = isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    norm = cast(_EvalBatchNorm, bn)  # a pair _why_not passed: bn keeps running statistics
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_mean)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    if isinstance(layer, nn.Linear):
        w, b = fuse_linear_bn_weights(
            layer.weight, layer.bias, norm.running_mean, norm.running_var, norm.eps, weight, bias
        )
    else:
        conv = cast(nn.modules.conv._ConvNd, layer)  # the other foldable layers: Conv and ConvTranspose
        w, b = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, weight, bias, transpose=transpose
        )
    fused.weight, fused.bias = w, b
    return fused


_FOLDABLE = (*_CONVS, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _why_not(layer: nn.Module | None, bn: nn.Module) -> str | None:
    if bn.training and not isinstance(bn, nl.FrozenBatchNorm2d):  # frozen: the same in training and eval
        return "in training mode: its statistics change with every batch (call model.eval() first)"
    if getattr(bn, "running_mean", None) is None:
        return "track_running_stats=False: it normalizes with batch statistics in eval too"
    if layer is None:
        return "its input does not come from a Conv/Linear module alone (an add, a pooling, a function...)"
    if not isinstance(layer, _FOLDABLE):
        return f"the layer before it is a {type(layer).__name__}, not a Conv/Linear"
    if type(layer).forward not in (c.forward for c in _FOLDABLE):
        return (
            f"the layer before it ({type(layer).__name__}) computes its own weight (WS, cosine): folding would "
            "change it"
        )
    if isinstance(layer, nn.Linear) and cast(torch.Tensor, bn.running_mean).numel() != layer.out_features:
        return "the Linear's outputs are not the BatchNorm's channels"
    return None


def _fold_traced(model: nn.Module, report: FoldReport) -> nn.Module:
    import torch.fx as fx

    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCH_NORMS):
            continue
        bn = modules[node.target]
        source = node.args[0] if node.args else None
        layer = None
        if isinstance(source, fx.Node) and source.op == "call_module":
            layer = modules[source.target]
            if len(source.users) > 1:
                report.skipped.append((node.target, f"the output of {source.target} is also used elsewhere"))
                continue
        reason = _why_not(layer, bn)
        if reason:
            report.skipped.append((node.target, reason))
            continue
        source, layer = cast(fx.Node, source), cast(nn.Module, layer)  # no reason: a call_module node before bn
        source_name = cast(str, source.target)  # a call_module node's target is the module's name
        parent, _, name = source_name.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, _fold_pair(layer, bn))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        report.folded.append((source_name, node.target))
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def _fold_sequential(model: nn.Module, report: FoldReport, prefix: str = "") -> None:
    for name, child in list(model.named_children()):
        _fold_sequential(child, report, f"{prefix}{name}.")
    if not isinstance(model, nn.Sequential):
        for name, child in model.named_children():
            if isinstance(child, _BATCH_NORMS):
                report.skipped.append(
                    (
                        prefix + name,
                        "the model does not trace with torch.fx and this BatchNorm is "
                        "not in a Sequential after its conv",
                    )
                )
        return
    keys = list(model._modules)
    for before, key in zip([None, *keys[:-1]], keys, strict=True):
        bn = model._modules[key]
        if not isinstance(bn, _BATCH_NORMS):
            continue
        layer = model._modules[before] if before is not None else None
        reason = _why_not(layer, bn)
        if reason:
            report.skipped.append((prefix + key, reason))
            continue
        before, layer = cast(str, before), cast(nn.Module, layer)  # no reason: bn follows a module
        model._modules[before] = _fold_pair(layer, bn)
        model._modules[key] = nn.Identity()
        report.folded.append((prefix + before, prefix + key))


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, FoldReport]:
    r"""Fold every eval BatchNorm into the Conv/Linear right before it: :math:`W' = W\gamma/\sqrt{\sigma^2+\epsilon}`,
    :math:`b' = (b-\mu)\gamma/\sqrt{\sigma^2+\epsilon}+\beta`; eval outputs are unchanged up to rounding.

    The model is traced with ``torch.fx`` (so residual blocks fold too); where it does not trace, adjacent
    (Conv, BatchNorm) pairs inside ``nn.Sequential`` are folded. Works on torch's, normlab's and frozen BatchNorms.

    Returns ``(model, report)``: a new model (the input is untouched unless ``inplace``; a traced model comes back as
    a ``torch.fx.GraphModule``) and a :class:`FoldReport` of what was folded and what was not, with the reason.

    Example::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
        >>> folded, report = normlab.fold_batchnorm(model)
        >>> report.folded
        [('0', '1')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm: model must be a torch.nn.Module, got {type(model).__name__}")
    work = model if inplace else copy.deepcopy(model)
    report = FoldReport()
    try:
        return _fold_traced(work, report), report
    except Exception as err:  # torch.fx cannot trace data-dependent control flow: fold what Sequential shows
        report = FoldReport(traced=False)
        report.skipped.append(
            ("(model)", f"torch.fx could not trace it ({type(err).__name__}); folded within nn.Sequential only")
        )
        _fold_sequential(work, report)
        return work, report


def _replace(model: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None], prefix: str = "") -> nn.Module:
    new = convert(prefix.rstrip("."), model)
    if new is not None:
        return new
    for name, child in list(model.named_children()):
        replacement = _replace(child, convert, f"{prefix}{name}.")
        if replacement is not child:
            setattr(model, name, replacement)
    return model


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d (torch's, normlab's, SyncBatchNorm on 4-d maps) becomes a :class:`normlab.nn.FrozenBatchNorm2d`
    with its running statistics and affine parameters as fixed buffers (fine-tuning with small batches); in place,
    returns the model (or the frozen layer if ``model`` is one)."""

    def convert(name: str, m: nn.Module) -> nn.Module | None:
        if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nl.SyncBatchNorm)) and m.running_mean is not None:
            return nl.FrozenBatchNorm2d.from_batch_norm(m)
        return None

    return _replace(model, convert)


@dataclass
class SwapReport:
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # (name, old class, new module repr)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.changed)} layer(s)"] + [f"  {n}: {old} -> {new}" for n, old, new in self.changed]
        if self.skipped:
            lines += [f"left {len(self.skipped)}:"] + [f"  {n}: {why}" for n, why in self.skipped]
        return "\n".join(lines)


def _valid_groups(channels: int, wanted: int) -> int:
    """The largest divisor of ``channels`` that is at most ``wanted`` (GroupNorm needs G | C)."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


_SOURCES: dict[str, tuple[type, ...]] = {
    "batch": (nn.modules.batchnorm._BatchNorm,),
    "instance": (nn.modules.instancenorm._InstanceNorm,),
    "group": (nn.GroupNorm,),
    "layer": (nn.LayerNorm,),
    "rms": (nn.RMSNorm,),
}


def _rank(module: nn.Module) -> int:
    """The spatial dims a norm module is built for, by its class (1d/2d/3d; LayerNorm and RMSNorm: 0)."""
    name = type(module).__name__
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return 0
    return int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else 2


def _channels(module: nn.Module) -> int | None:
    for attr in ("num_features", "num_channels"):
        if getattr(module, attr, None) is not None:
            return getattr(module, attr)
    shape: tuple[int, ...] = getattr(module, "normalized_shape", ())
    return shape[0] if len(shape) == 1 else None


def swap(
    model: nn.Module, source: str, target: str, num_groups: int = 32, **kwargs: Any
) -> tuple[nn.Module, SwapReport]:
    """Replace, in place, every ``source`` norm layer of ``model`` by the registry's ``target`` for the same channels
    (``swap(model, "batch", "group")``: every BatchNorm becomes a GroupNorm with a valid group count, at most
    ``num_groups``). Per-channel ``weight`` and ``bias`` carry over when the target has them; statistics do not.
    Returns ``(model, report)``; ``report`` lists each change and each layer it could not swap, with why.

    Example::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3), torch.nn.BatchNorm2d(24))
        >>> model, report = normlab.swap(model, "batch", "group", num_groups=16)
        >>> model[1]
        GroupNorm(12, 24, eps=1e-05, affine=True, bias=True)
    """
    src, dst = get_method(source), get_method(target)
    if src.name not in _SOURCES:
        raise ValueError(f"swap: source must be one of {', '.join(_SOURCES)}; got {source!r}")
    report = SwapReport()

    def convert(name: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, _SOURCES[src.name]) or hasattr(type(m), "norm_class"):  # norm+act keeps its act
            return None
        channels, rank = _channels(m), _rank(m)
        if channels is None or isinstance(m, (nl.LayerNorm2d, nl.RMSNorm2d)):
            report.skipped.append(
                (
                    name,
                    "it normalizes several trailing dims, or channels per position, not "
                    "the channel dim of a feature map",
                )
            )
            return None
        options = dict(kwargs)
        if dst.grouped:
            options.setdefault("num_groups", _valid_groups(channels, num_groups))
        try:
            new = create_norm(dst.name, channels, spatial_dims=rank, **options)
        except ValueError as err:
            report.skipped.append((name, str(err)))
            return None
        with torch.no_grad():
            for attr in ("weight", "bias"):
                old, mine = getattr(m, attr, None), getattr(new, attr, None)
                if isinstance(mine, nn.Parameter) and isinstance(old, torch.Tensor) and mine.shape == old.shape:
                    mine.copy_(old)
        reference = next(iter(m.state_dict().values()), None)
        if reference is not None:
            new.to(device=reference.device)
        new.train(m.training)
        report.changed.append((name, type(m).__name__, repr(new)))
        return new

    return _replace(model, convert), report


def param_groups(
    model: nn.Module, weight_decay: float, no_decay: Iterable[str] = (), bias: bool = True
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight decay on weights, none on norm parameters and (with ``bias``) biases.

    Weight decay on a norm's scale or shift does not regularize what the network computes (a BatchNorm after a layer
    undoes that layer's scale; see the lab's weight-decay study), so the usual practice, timm's and Hugging Face's,
    exempts them. ``no_decay`` adds parameter names (substrings) to exempt.

    Example::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> [len(g["params"]) for g in normlab.param_groups(model, weight_decay=0.05)]
        [1, 3]
    """
    if weight_decay < 0:
        raise ValueError(f"param_groups: weight_decay must be >= 0, got {weight_decay}")
    norm_params = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = id(p) in norm_params or (bias and name.endswith("bias")) or any(k in name for k in no_decay)
        (exempt if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
