"""Norms that keep their weights in float32 inside a model trained in fp16/bf16 (:func:`keep_norms_fp32`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .transform import is_norm

__all__ = ["keep_norms_fp32"]

_LOW = (torch.float16, torch.bfloat16)


def _upcast(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW:
        return value.float()
    if isinstance(value, (tuple, list)):
        return type(value)(_upcast(v) for v in value)
    return value


def _cast_back(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_back(v, dtype) for v in value)
    return value


def _fp32_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: remember the input's dtype, run the norm on float32."""
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
    # ignored: torch types Module.__setattr__ for Tensor and Module values only; a dtype is a plain attribute
    module._normlab_input_dtype = first.dtype if first is not None else None  # type: ignore[assignment]
    return _upcast(args)


def _input_dtype_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: the output in the dtype the input came in."""
    dtype = getattr(module, "_normlab_input_dtype", None)
    return output if dtype is None else _cast_back(output, dtype)


def keep_norms_fp32(model: nn.Module) -> nn.Module:
    """Keep every normalization layer of ``model`` in float32 while the rest of it trains in fp16/bf16; in place,
    returns ``model``.

    Each norm (:func:`normlab.transform.is_norm`: torch's, normlab's, Hugging Face's and timm's) gets its fp16/bf16
    parameters and buffers cast to float32 (the same ``Parameter`` objects, so an optimizer built before still holds
    them; float64 stays float64), and hooks that cast its fp16/bf16 input to float32 and its output back to the
    input's dtype. The statistics are then taken in float32, the running statistics accumulate in float32, and the
    layers around the norm still see the model's dtype.

    Why: a norm's scale sits near 1, where bf16 (8 significant bits) spaces its numbers 2^-8 (below 1) to 2^-7
    (above 1) apart, so an update smaller than half that spacing, 2^-9 to 2^-8 (about 0.002 to 0.004), rounds away:
    one Adam step at lr 1e-3 moves a weight by about 1e-3, and in pure bf16 training the scales never move. (fp16
    keeps 11 bits: steps below 2^-12 to 2^-11, about 2.4e-4 to 4.9e-4, round away.) Unsloth and NeMo keep norm
    weights in float32 for this reason.

    Call it before the optimizer's first step (its state takes the parameters' dtype). Calling it again (after
    ``model.to(torch.bfloat16)``, say) casts the norms back to float32 without stacking hooks; state_dict keys do not
    change.

    Args:
        model: any ``torch.nn.Module``, usually one already cast with ``model.to(torch.bfloat16)``.

    Example::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8)).to(torch.bfloat16)
        >>> one = torch.ones(1, dtype=torch.bfloat16)
        >>> bool(one + 1e-3 == one)   # an Adam step at lr 1e-3 is lost on a bf16 weight of 1
        True
        >>> model = normlab.keep_norms_fp32(model)
        >>> model[1].weight.dtype, model(torch.randn(2, 4, dtype=torch.bfloat16)).dtype
        (torch.float32, torch.bfloat16)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"keep_norms_fp32: model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if not is_norm(module):
            continue
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                if p.dtype in _LOW:
                    p.data = p.data.float()
                    if p.grad is not None:
                        p.grad = p.grad.float()
            for name, b in module.named_buffers(recurse=False):
                if b.dtype in _LOW:
                    module._buffers[name] = b.float()
        if _fp32_input not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_fp32_input)
            module.register_forward_hook(_input_dtype_output)
    return model
