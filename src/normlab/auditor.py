"""``normlab.audit``: run a model once on an example input and report normalization problems, each with its reason,
the evidence measured on this model, and a fix.

The checks watch the forward pass with hooks (so any model works, traced or not): which tensor each norm
receives, its shape and dtype, and whether it is the very output of a conv/linear layer.
"""

from __future__ import annotations

import copy
import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from . import nn as nl
from .convert import looks_like_norm

__all__ = ["Finding", "audit", "format_findings"]

_BN = nn.modules.batchnorm._BatchNorm
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_LOW = (torch.float16, torch.bfloat16)
_ADAM_LRS = (1e-3, 1e-4)  # one Adam step moves a weight by about lr: Adam's default lr and a usual fine-tuning one
_KEEP_FP32 = (
    "normlab.keep_norms_fp32(model): norm parameters, buffers and statistics in float32, inputs and "
    "outputs in the model's dtype (or torch.autocast on a float32 model)"
)
# Group Norm paper (Wu & He 2018), ResNet-50 ImageNet top-1 error (%), images per GPU, BN not synced
_GN_PAPER = {32: (23.6, 24.1), 16: (23.7, 24.2), 8: (24.8, 24.0), 4: (27.3, 24.2), 2: (34.7, 24.1)}


@dataclass
class Finding:
    rule: str
    module: str
    reason: str
    evidence: str
    fix: str


def _published_bn_vs_gn(batch: int) -> str:
    key = min(_GN_PAPER, key=lambda b: abs(b - batch))
    bn, gn = _GN_PAPER[key]
    return (
        f"published (Wu & He 2018, ResNet-50 ImageNet top-1 error): at {key} images per GPU BN {bn}% vs GN "
        f"{gn}%; BN 23.6% at 32"
    )


def _percent(share: float) -> str:
    """A share as a percentage that says 0% and 100% only when it is exactly that."""
    if 0 < share < 0.01:
        return "<1%"
    if 0.99 < share < 1:
        return ">99%"
    return f"{share:.0%}"


def _lost_updates_evidence(params: Mapping[str, torch.Tensor]) -> str:
    """For each parameter, the share of its values that one Adam step leaves unchanged in the parameter's dtype: Adam
    moves each weight by about lr whatever the gradient's scale, so the share of ``w + lr == w`` (and ``w - lr``)."""
    shares = []
    for pname, p in params.items():
        w = p.detach()
        lost = [float(((w + lr == w).float().mean() + (w - lr == w).float().mean()) / 2) for lr in _ADAM_LRS]
        shares.append(f"{pname} {' | '.join(_percent(s) for s in lost)}")
    dtype = next(iter(params.values())).dtype
    lrs = " | ".join(f"{lr:.0e}".replace("e-0", "e-") for lr in _ADAM_LRS)
    return f"share of values one Adam step (±lr) leaves unchanged in {dtype}, at lr {lrs}: {', '.join(shares)}"


def _values_per_statistic(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, str] | None:
    """How many values one statistic of ``module`` sees on an input of ``shape``, and which kind it is."""
    spatial = 1
    for d in shape[2:]:
        spatial *= d
    if isinstance(module, _BN) and module.training:
        return shape[0] * spatial, "BatchNorm (per channel over the batch and positions)"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return spatial, "InstanceNorm (per example and channel over positions)"
    if isinstance(module, nn.GroupNorm):
        return shape[1] // module.num_groups * spatial, "GroupNorm (per example and group)"
    return None


class _Watcher:
    """Forward hooks recording what each norm receives."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {m: n or "(model)" for n, m in model.named_modules()}
        self.layer_outputs: dict[int, nn.Module] = {}
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.handles = []
        for m in model.modules():
            if isinstance(m, _LAYERS):
                self.handles.append(m.register_forward_hook(self._layer_output))
            if looks_like_norm(m) or isinstance(m, (_BN, nn.GroupNorm, nn.LayerNorm)):
                self.handles.append(m.register_forward_pre_hook(self._norm_input, prepend=True))

    def _layer_output(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if isinstance(output, torch.Tensor):
            self.layer_outputs[id(output)] = module

    def _norm_input(self, module: nn.Module, args: tuple[object, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and module not in self.inputs:
            self.inputs[module] = args[0]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _low_precision_error(module: nn.Module, x: torch.Tensor) -> float | None:
    """Largest |output - output computed in float32| over the float32 output's largest magnitude (copies of the
    module, so no running statistic moves)."""
    try:
        with torch.no_grad():
            low = copy.deepcopy(module)(x).float()
            high = copy.deepcopy(module).float()(x.float())
    except (RuntimeError, ValueError, TypeError):
        return None
    scale = float(high.abs().max())
    if not torch.isfinite(low).all():
        return float("inf")
    return float((low - high).abs().max()) / scale if scale > 0 else None


def _check_norm(
    name: str, m: nn.Module, x: torch.Tensor, before: nn.Module | None, batch: int, watcher: _Watcher
) -> list[Finding]:
    found = []
    if isinstance(m, _BN) and before is not None and getattr(before, "bias", None) is not None:
        found.append(
            Finding(
                "bias-before-bn",
                name,
                "BatchNorm subtracts the per-channel mean, so the bias of the layer before it "
                "cancels: it is trained but changes nothing",
                f"{watcher.names[before]}.bias: {cast(torch.Tensor, before.bias).numel()} parameters feed straight "
                f"into {name}",
                f"build {watcher.names[before]} with bias=False",
            )
        )
    if isinstance(m, _BN) and m.training and batch <= 4 and x.dim() >= 3:
        found.append(
            Finding(
                "small-batch-bn",
                name,
                "BatchNorm's statistics over a batch this small are noisy, and training and eval statistics disagree",
                f"batch size {batch}; {_published_bn_vs_gn(batch)}",
                "GroupNorm (normlab.swap(model, 'batch', 'group')), SyncBatchNorm across GPUs, or FrozenBatchNorm2d "
                "when fine-tuning",
            )
        )
    seen = _values_per_statistic(m, tuple(x.shape))
    if seen is not None and seen[0] == 1:
        found.append(
            Finding(
                "single-value-statistic",
                name,
                "a statistic over one value has variance 0: the output is the bias alone "
                "and the input's signal is lost",
                f"{seen[1]} on input {tuple(x.shape)}: 1 value per statistic",
                "a norm whose statistics span more values (GroupNorm/LayerNorm for vectors, a larger batch for BN)",
            )
        )
    if (
        isinstance(m, nn.LayerNorm)
        and x.dim() == 4
        and len(m.normalized_shape) == 1
        and not x.is_contiguous()
        and x.permute(0, 3, 1, 2).is_contiguous()
    ):
        found.append(
            Finding(
                "permuted-layernorm",
                name,
                "LayerNorm over channels reached by permuting an NCHW map: two permutes and a copy per call",
                f"input {tuple(x.shape)} is a permuted view of a contiguous NCHW tensor",
                "normlab.nn.LayerNorm2d on the NCHW map (no permute; no copy on channels_last input)",
            )
        )
    low_params = {n: p for n, p in m.named_parameters(recurse=False) if p.requires_grad and p.dtype in _LOW}
    if low_params:
        found.append(
            Finding(
                "lost-norm-updates",
                name,
                "a norm's scale sits near 1, where fp16/bf16 numbers are far apart (bf16: "
                "2^-8 to 2^-7): an optimizer step smaller than half that spacing rounds away and the parameter stops "
                "learning",
                _lost_updates_evidence(low_params),
                _KEEP_FP32,
            )
        )
    low_buffers = {n: b for n, b in m.named_buffers(recurse=False) if b.dtype in _LOW}
    if low_buffers:
        found.append(
            Finding(
                "low-precision-norm",
                name,
                "a norm's running statistics held in fp16/bf16 round every update (a variance "
                "near 1e-3 keeps ~3 digits)",
                f"{', '.join(low_buffers)} in {next(iter(low_buffers.values())).dtype}",
                _KEEP_FP32,
            )
        )
    low_state = low_buffers or any(p.dtype in _LOW for p in m.parameters(recurse=False))
    if x.dtype in _LOW and not low_state:
        error = _low_precision_error(m, x)
        if error is not None and error > 8 * torch.finfo(x.dtype).eps:
            found.append(
                Finding(
                    "low-precision-statistics",
                    name,
                    f"on {x.dtype} input this norm's output is far from the same "
                    "module computed in float32: its statistics are taken in low precision",
                    f"largest difference {error:.2g} of the output's scale (rounding alone: about "
                    f"{torch.finfo(x.dtype).eps:.1g})",
                    "compute the statistics in float32 (x.float() first), as torch's and normlab's norms do",
                )
            )
    momentum = getattr(m, "momentum", None)
    if isinstance(m, _BN) and isinstance(momentum, float) and momentum >= 0.5:
        found.append(
            Finding(
                "keras-momentum",
                name,
                "torch's momentum is the weight of the new batch (Keras's is the weight of the "
                "old average): 0.9 here keeps only 10% of the history",
                f"momentum={momentum}",
                f"momentum={1 - momentum:.2g} (torch's meaning of Keras's {momentum})",
            )
        )
    return found


def audit(
    model: nn.Module, example_input: Any, optimizer: torch.optim.Optimizer | None = None, batch_size: int | None = None
) -> list[Finding]:
    """Run ``model`` once on ``example_input`` (no gradients; training flags and running statistics restored) and
    return what it finds, each :class:`Finding` with rule, module, reason, evidence and fix.

    Rules: a conv/linear bias right before BatchNorm; BatchNorm training at batch size <= 4 (``batch_size``
    overrides the example's); a statistic over a single value (IN/GN/BN); LayerNorm reached through permutes of an
    NCHW map; trainable norm parameters in fp16/bf16, with the share of their values that one Adam step leaves
    unchanged (the update rounds away); running statistics in fp16/bf16; Keras-style momentum (>= 0.5) in a torch
    BatchNorm; weight decay on norm parameters (when ``optimizer`` is given); a norm left in training mode in a model
    put in eval; a norm whose fp16/bf16 output is far from the same module computed in float32 (statistics taken in
    low precision). :func:`format_findings` prints findings of one rule with the same evidence as one entry.

    Example::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8, momentum=0.9))
        >>> [f.rule for f in normlab.audit(model, torch.randn(2, 3, 8, 8))]
        ['bias-before-bn', 'small-batch-bn', 'keras-momentum']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"audit: model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    if first is None:
        raise TypeError("audit: example_input must be a tensor or a tuple holding one")
    batch = batch_size if batch_size is not None else (first.shape[0] if first.dim() else 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    watcher = _Watcher(model)
    findings: list[Finding] = []
    try:
        with torch.no_grad():
            model(*inputs)
    except (RuntimeError, ValueError) as err:  # the findings below usually say why; the error is one of them
        last = list(watcher.inputs)[-1] if watcher.inputs else model
        findings.append(
            Finding(
                "forward-fails",
                watcher.names[last],
                "the model raised on the example input",
                f"{type(err).__name__}: {str(err).splitlines()[0]}",
                "see the other findings",
            )
        )
    finally:
        watcher.close()
        model.load_state_dict(state)
    for m, x in watcher.inputs.items():
        before = watcher.layer_outputs.get(id(x))
        findings += _check_norm(watcher.names[m], m, x, before, batch, watcher)
    if not model.training:
        for name, m in model.named_modules():
            if m.training and isinstance(m, (_BN, nl.SwitchableNorm, nl.EvoNormB0, nl.MeanOnlyBatchNorm)):
                findings.append(
                    Finding(
                        "train-mode-norm",
                        name,
                        "the model is in eval mode but this norm is not: it normalizes with the "
                        "batch's statistics and keeps updating its running ones",
                        f"{name}.training is True",
                        "call model.eval() after changing modules, or set this module's training flag",
                    )
                )
    if optimizer is not None:
        norm_params = {
            id(p): f"{name}.{pname}"
            for name, m in model.named_modules()
            if looks_like_norm(m) or isinstance(m, _BN)
            for pname, p in m.named_parameters(recurse=False)
        }
        for group in optimizer.param_groups:
            decayed = [norm_params[id(p)] for p in group["params"] if id(p) in norm_params]
            if decayed and group.get("weight_decay", 0) > 0:
                findings.append(
                    Finding(
                        "norm-weight-decay",
                        ", ".join(decayed[:3]) + (" ..." if len(decayed) > 3 else ""),
                        "weight decay on a norm's scale and shift does not regularize what the network computes "
                        "(van Laarhoven 2017); it only pulls the scale towards 0",
                        f"{len(decayed)} norm parameters in a group with weight_decay={group['weight_decay']}",
                        "optimizer groups from normlab.param_groups(model, weight_decay)",
                    )
                )
    return findings


def _grouped(findings: list[Finding]) -> list[tuple[Finding, list[str]]]:
    """Findings of one rule with the same evidence as one entry: (the first of them, every module), in order."""
    groups: dict[tuple[str, str, str, str], tuple[Finding, list[str]]] = {}
    for f in findings:
        groups.setdefault((f.rule, f.reason, f.evidence, f.fix), (f, []))[1].append(f.module)
    return list(groups.values())


def format_findings(findings: list[Finding], as_json: bool = False) -> str:
    """A text table (or JSON) of ``findings``; findings of one rule with the same evidence are one entry that lists
    their modules (JSON: ``"modules"``)."""
    groups = _grouped(findings)
    if as_json:
        rows = [
            {"rule": f.rule, "modules": modules, "reason": f.reason, "evidence": f.evidence, "fix": f.fix}
            for f, modules in groups
        ]
        return json.dumps(rows, indent=2)
    if not findings:
        return "no findings"
    lines = [f"{len(groups)} finding(s) in {len({f.module for f in findings})} module(s)"]
    for f, modules in groups:
        where = modules[0] if len(modules) == 1 else f"{len(modules)} modules: {', '.join(modules)}"
        lines += [
            textwrap.fill(
                f"[{f.rule}] {where}",
                width=120,
                subsequent_indent="    ",
                break_on_hyphens=False,
                break_long_words=False,
            ),
            f"  why:      {f.reason}",
            f"  evidence: {f.evidence}",
            f"  fix:      {f.fix}",
        ]
    return "\n".join(lines)
