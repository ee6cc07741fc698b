"""Converters for third-party norm classes (Hugging Face transformers, timm), used by :func:`normlab.from_torch`.

Each returns the normlab module that computes what the original computes, cast for cast, holding the original's
weight Parameter (no copy):

- ``LlamaRMSNorm`` and its copies (Mistral, Qwen2, Qwen3, Phi-3, ...): ``RMSNorm(casting_mode="llama")``: x to
  float32, normalize, cast to the input dtype, then times the weight.
- ``GemmaRMSNorm`` (Gemma 1-3): ``RMSNorm(weight_offset=1, casting_mode="gemma")``: the weight is stored as
  :math:`\\gamma - 1`; x and the weight in float32, cast last.
- ``T5LayerNorm``: ``RMSNorm(casting_mode="t5")``.
- ``OlmoLayerNorm``: ``LayerNorm(elementwise_affine=False, upcast=True)``, eps 1e-5.
- timm's ``LayerNorm2d`` and ``LayerNorm``: ``LayerNorm2d`` / ``LayerNorm`` (left in place when timm's fast-norm
  mode is on: it casts differently under autocast).

transformers keeps "copies" of a class in other model files (generated from one definition); a class named
``...Norm`` whose methods are, up to comments, those of a class above gets its converter too. Nothing here imports
transformers or timm: the classes are named by their import path. A converter may return None: the module is
then left in place and named in from_torch's warning.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from functools import cache
from typing import Protocol, cast

import torch
from torch import Tensor
from torch.nn import Module

from . import nn as nl
from .nn._state import carry_state

__all__ = ["CONVERTERS", "converter_for_copy"]


def _carry(source: Module, new: Module) -> Module:
    """``new`` holding ``source``'s parameters and buffers (the same objects) and its training flag."""
    carry_state(source, new)
    return new


# What the converters read of classes named by their path (never imported, so mypy does not know their attributes)


class _LlamaRMSNorm(Protocol):  # LlamaRMSNorm, its copies, T5LayerNorm
    weight: Tensor
    variance_epsilon: float


class _GemmaRMSNorm(Protocol):
    weight: Tensor
    eps: float


class _OlmoLayerNorm(Protocol):
    normalized_shape: tuple[int, ...]


def llama_rms_norm(module: Module) -> Module:
    hf = cast(_LlamaRMSNorm, module)
    new = nl.RMSNorm(tuple(hf.weight.shape), eps=hf.variance_epsilon, casting_mode="llama", device="meta")
    return _carry(module, new)


def gemma_rms_norm(module: Module) -> Module:
    hf = cast(_GemmaRMSNorm, module)
    new = nl.RMSNorm(tuple(hf.weight.shape), eps=hf.eps, weight_offset=1.0, casting_mode="gemma", device="meta")
    return _carry(module, new)


def t5_layer_norm(module: Module) -> Module:
    hf = cast(_LlamaRMSNorm, module)
    new = nl.RMSNorm(tuple(hf.weight.shape), eps=hf.variance_epsilon, casting_mode="t5", device="meta")
    return _carry(module, new)


def olmo_layer_norm(module: Module) -> Module:
    new = nl.LayerNorm(cast(_OlmoLayerNorm, module).normalized_shape, eps=1e-5, elementwise_affine=False, upcast=True)
    return new.train(module.training)  # no parameters or buffers to carry


def timm_layer_norm_2d(module: Module) -> Module | None:
    if getattr(module, "_fast_norm", False):
        return None
    ln = cast(torch.nn.LayerNorm, module)  # timm's LayerNorm2d is a torch LayerNorm
    new = nl.LayerNorm2d(ln.normalized_shape[0], eps=ln.eps, affine=ln.elementwise_affine, device="meta")
    return _carry(module, new)


def timm_layer_norm(module: Module) -> Module | None:
    if getattr(module, "_fast_norm", False):
        return None
    ln = cast(torch.nn.LayerNorm, module)  # timm's LayerNorm is a torch LayerNorm
    new = nl.LayerNorm(
        ln.normalized_shape,
        eps=ln.eps,
        elementwise_affine=ln.elementwise_affine,
        bias=ln.bias is not None,
        device="meta",
    )
    return _carry(module, new)


CONVERTERS: dict[str, Callable[[Module], Module | None]] = {
    "timm.layers.norm.LayerNorm2d": timm_layer_norm_2d,
    "timm.layers.norm.LayerNorm": timm_layer_norm,
    "transformers.models.llama.modeling_llama.LlamaRMSNorm": llama_rms_norm,
    "transformers.models.mistral.modeling_mistral.MistralRMSNorm": llama_rms_norm,
    "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm": llama_rms_norm,
    "transformers.models.qwen3.modeling_qwen3.Qwen3RMSNorm": llama_rms_norm,
    "transformers.models.gemma.modeling_gemma.GemmaRMSNorm": gemma_rms_norm,
    "transformers.models.t5.modeling_t5.T5LayerNorm": t5_layer_norm,
    "transformers.models.olmo.modeling_olmo.OlmoLayerNorm": olmo_layer_norm,
}


def _code(cls: type) -> tuple[str, ...] | None:
    """The class's methods other than ``__init__``/``extra_repr``, without comments, blank lines or its own name."""
    try:
        parts = []
        for name, fn in sorted(vars(cls).items()):
            if callable(fn) and name not in ("__init__", "extra_repr"):
                lines = [re.sub(r"#.*", "", line).rstrip() for line in inspect.getsource(fn).splitlines()]
                parts.append("\n".join(line for line in lines if line.strip()).replace(cls.__name__, "<cls>"))
        return tuple(parts)
    except (OSError, TypeError):
        return None


@cache
def _known_code() -> dict[tuple[str, ...], Callable[[Module], Module | None]]:
    known: dict[tuple[str, ...], Callable[[Module], Module | None]] = {}
    for path, fn in CONVERTERS.items():
        module_name, _, class_name = path.rpartition(".")
        try:
            code = _code(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
        if code:
            known.setdefault(code, fn)
    return known


@cache
def converter_for_copy(cls: type) -> Callable[[Module], Module | None] | None:
    """The converter of the known class whose methods ``cls`` repeats (transformers' copies), or None."""
    if "Norm" not in cls.__name__:
        return None
    code = _code(cls)
    return _known_code().get(code) if code else None
