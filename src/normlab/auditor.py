"""``normlab.audit``: run a model once on an example input and report normalization problems, each with its reason,
the evidence measured on this model, and a fix.

The checks watch the forward pass with hooks (so any model works, traced or not): which tensor each norm
receives, its shape and dtype, and whether it is the very output of a conv/linear layer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from . import nn as nl
from .convert import looks_like_norm

__all__ = ["Finding", "audit", "format_findings"]

_BN = nn.modules.batchnorm._BatchNorm
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
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
    return (f"published (Wu & He 2018, ResNet-50 ImageNet top-1 error): at {key} images per GPU BN {bn}% vs GN "
            f"{gn}%; BN 23.6% at 32")  # fmt: skip


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
                self.handles.append(m.register_forward_pre_hook(self._norm_input))

    def _layer_output(self, module, args, output) -> None:
        if isinstance(output, torch.Tensor):
            self.layer_outputs[id(output)] = module

    def _norm_input(self, module, args) -> None:
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


def _check_norm(name: str, m: nn.Module, x: torch.Tensor, before: nn.Module | None, batch: int,
                watcher: _Watcher) -> list[Finding]:  # fmt: skip
    found = []
    if isinstance(m, _BN) and before is not None and getattr(before, "bias", None) is not None:
        found.append(Finding(
            "bias-before-bn", name, "BatchNorm subtracts the per-channel mean, so the bias of the layer before it "
            "cancels: it is trained but changes nothing", f"{watcher.names[before]}.bias: "
            f"{before.bias.numel()} parameters feed straight into {name}",
            f"build {watcher.names[before]} with bias=False"))  # fmt: skip
    if isinstance(m, _BN) and m.training and batch <= 4 and x.dim() >= 3:
        found.append(Finding(
            "small-batch-bn", name, "BatchNorm's statistics over a batch this small are noisy, and training and "
            "eval statistics disagree", f"batch size {batch}; {_published_bn_vs_gn(batch)}",
            "GroupNorm (normlab.swap(model, 'batch', 'group')), SyncBatchNorm across GPUs, or FrozenBatchNorm2d when "
            "fine-tuning"))  # fmt: skip
    seen = _values_per_statistic(m, tuple(x.shape))
    if seen is not None and seen[0] == 1:
        found.append(Finding(
            "single-value-statistic", name, "a statistic over one value has variance 0: the output is the bias alone "
            "and the input's signal is lost", f"{seen[1]} on input {tuple(x.shape)}: 1 value per statistic",
            "a norm whose statistics span more values (GroupNorm/LayerNorm for vectors, a larger batch for BN)"))  # fmt: skip
    if isinstance(m, nn.LayerNorm) and x.dim() == 4 and len(m.normalized_shape) == 1 \
            and not x.is_contiguous() and x.permute(0, 3, 1, 2).is_contiguous():
        found.append(Finding(
            "permuted-layernorm", name, "LayerNorm over channels reached by permuting an NCHW map: two permutes and "
            "a copy per call", f"input {tuple(x.shape)} is a permuted view of a contiguous NCHW tensor",
            "normlab.nn.LayerNorm2d on the NCHW map (no permute; no copy on channels_last input)"))  # fmt: skip
    low = [n for n, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
           if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16)]  # fmt: skip
    if low:
        found.append(Finding(
            "low-precision-norm", name, "a norm's running statistics and scale held in fp16/bf16 round every update "
            "(a variance near 1e-3 keeps ~3 digits)", f"{', '.join(low)} in {m.state_dict()[low[0]].dtype}",
            "keep norms in float32 (use torch.autocast instead of model.half(): it runs norms in float32)"))  # fmt: skip
    if x.dtype in (torch.float16, torch.bfloat16) and not low:
        error = _low_precision_error(m, x)
        if error is not None and error > 8 * torch.finfo(x.dtype).eps:
            found.append(Finding(
                "low-precision-statistics", name, f"on {x.dtype} input this norm's output is far from the same "
                "module computed in float32: its statistics are taken in low precision",
                f"largest difference {error:.2g} of the output's scale (rounding alone: about "
                f"{torch.finfo(x.dtype).eps:.1g})", "compute the statistics in float32 (x.float() first), as "
                "torch's and normlab's norms do"))  # fmt: skip
    momentum = getattr(m, "momentum", None)
    if isinstance(m, _BN) and isinstance(momentum, float) and momentum >= 0.5:
        found.append(Finding(
            "keras-momentum", name, "torch's momentum is the weight of the new batch (Keras's is the weight of the "
            "old average): 0.9 here keeps only 10% of the history", f"momentum={momentum}",
            f"momentum={1 - momentum:.2g} (torch's meaning of Keras's {momentum})"))  # fmt: skip
    return found


def audit(model: nn.Module, example_input: Any, optimizer: torch.optim.Optimizer | None = None,
          batch_size: int | None = None) -> list[Finding]:  # fmt: skip
    """Run ``model`` once on ``example_input`` (no gradients; training flags and running statistics restored) and
    return what it finds, each :class:`Finding` with rule, module, reason, evidence and fix.

    Rules: a conv/linear bias right before BatchNorm; BatchNorm training at batch size <= 4 (``batch_size``
    overrides the example's); a statistic over a single value (IN/GN/BN); LayerNorm reached through permutes of an
    NCHW map; norms held in fp16/bf16; Keras-style momentum (>= 0.5) in a torch BatchNorm; weight decay on norm
    parameters (when ``optimizer`` is given); a norm left in training mode in a model put in eval; a norm whose
    fp16/bf16 output is far from the same module computed in float32 (statistics taken in low precision).

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
        findings.append(Finding("forward-fails", watcher.names[last], "the model raised on the example input",
                                f"{type(err).__name__}: {str(err).splitlines()[0]}", "see the other findings"))
    finally:
        watcher.close()
        model.load_state_dict(state)
    for m, x in watcher.inputs.items():
        before = watcher.layer_outputs.get(id(x))
        findings += _check_norm(watcher.names[m], m, x, before, batch, watcher)
    if not model.training:
        for name, m in model.named_modules():
            if m.training and isinstance(m, (_BN, nl.SwitchableNorm, nl.EvoNormB0, nl.MeanOnlyBatchNorm)):
                findings.append(Finding(
                    "train-mode-norm", name, "the model is in eval mode but this norm is not: it normalizes with the "
                    "batch's statistics and keeps updating its running ones", f"{name}.training is True",
                    "call model.eval() after changing modules, or set this module's training flag"))  # fmt: skip
    if optimizer is not None:
        norm_params = {id(p): f"{name}.{pname}" for name, m in model.named_modules()
                       if looks_like_norm(m) or isinstance(m, _BN) for pname, p in m.named_parameters(recurse=False)}
        for group in optimizer.param_groups:
            decayed = [norm_params[id(p)] for p in group["params"] if id(p) in norm_params]
            if decayed and group.get("weight_decay", 0) > 0:
                findings.append(Finding(
                    "norm-weight-decay", ", ".join(decayed[:3]) + (" ..." if len(decayed) > 3 else ""),
                    "weight decay on a norm's scale and shift does not regularize what the network computes "
                    "(van Laarhoven 2017); it only pulls the scale towards 0",
                    f"{len(decayed)} norm parameters in a group with weight_decay={group['weight_decay']}",
                    "optimizer groups from normlab.param_groups(model, weight_decay)"))  # fmt: skip
    return findings


def format_findings(findings: list[Finding], as_json: bool = False) -> str:
    """A text table (or JSON) of ``findings``."""
    if as_json:
        return json.dumps([asdict(f) for f in findings], indent=2)
    if not findings:
        return "no findings"
    lines = [f"{len(findings)} finding(s)"]
    for f in findings:
        lines += [f"[{f.rule}] {f.module}", f"  why:      {f.reason}", f"  evidence: {f.evidence}",
                  f"  fix:      {f.fix}"]  # fmt: skip
    return "\n".join(lines)
