"""Swap a model's normalization layers between torch.nn and normlab, in place, both ways.

The twin takes over the very same Parameter and buffer objects (so an optimizer built before the swap keeps
working), the training flag, and with them the device and dtype. Exact torch classes convert by the twin table;
other classes (Hugging Face's ``LlamaRMSNorm``, ...) by a converter registered for them
(:func:`register_converter`). A subclass (timm's BatchNormAct2d, say) has behaviour of its own that a plain twin
would drop, so it is left alone; every norm-looking class left in place is named in a warning.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch.nn import Module

from . import converters
from . import nn as nl
from .nn._state import carry_state
from .nn.norm_act import NORM_ACT_CLASSES, split_norm_act

__all__ = ["from_torch", "to_torch", "TWINS", "register_converter", "converter_for", "looks_like_norm"]


def _torch_twins() -> list[tuple[type[Module], type[Module]]]:
    tn = torch.nn
    pairs: list[tuple[type[Module], type[Module]]] = [
        (tn.BatchNorm1d, nl.BatchNorm1d),
        (tn.BatchNorm2d, nl.BatchNorm2d),
        (tn.BatchNorm3d, nl.BatchNorm3d),
        (tn.InstanceNorm1d, nl.InstanceNorm1d),
        (tn.InstanceNorm2d, nl.InstanceNorm2d),
        (tn.InstanceNorm3d, nl.InstanceNorm3d),
        (tn.LayerNorm, nl.LayerNorm),
        (tn.GroupNorm, nl.GroupNorm),
    ]
    pairs.append((tn.SyncBatchNorm, nl.SyncBatchNorm))
    if hasattr(tn, "RMSNorm"):
        pairs.append((tn.RMSNorm, nl.RMSNorm))
    return pairs


TWINS: list[tuple[type[Module], type[Module]]] = _torch_twins()
"""(torch class, normlab class) pairs that :func:`from_torch` and :func:`to_torch` convert between."""
_NORM_ACT_TYPES = frozenset(NORM_ACT_CLASSES.values())


def _hyperparameters(module: Module) -> dict[str, Any]:
    """Constructor arguments that rebuild ``module``'s configuration (parameters and buffers are carried apart)."""
    kw: dict[str, Any]
    if hasattr(module, "num_groups"):
        kw = dict(num_groups=module.num_groups, num_channels=module.num_channels, eps=module.eps, affine=module.affine)
    elif hasattr(module, "num_features"):
        kw = dict(
            num_features=module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    else:
        kw = dict(
            normalized_shape=module.normalized_shape, eps=module.eps, elementwise_affine=module.elementwise_affine
        )
    if hasattr(module, "process_group"):
        kw["process_group"] = module.process_group
    if "bias" in module._parameters and (
        getattr(module, "affine", None) or getattr(module, "elementwise_affine", None)
    ):
        kw["bias"] = module.bias is not None
    return kw


def _build_twin(module: Module, target: type[Module]) -> Module:
    kw = _hyperparameters(module)
    accepted = inspect.signature(target.__init__).parameters
    if kw.get("bias") is False and "bias" not in accepted:
        raise ValueError(
            f"cannot convert {type(module).__name__}(bias=False) to {target.__module__}.{target.__name__}: this torch "
            f"version's {target.__name__} has no bias argument"
        )
    kw = {k: v for k, v in kw.items() if k in accepted}
    twin = target(**kw, device="meta")
    carry_state(module, twin)
    return twin


Converter = Callable[[Module], Module | None]  # None: cannot convert this instance (it is left and named)
_CONVERTERS: dict[str, Converter] = dict(converters.CONVERTERS)


def _class_key(cls: type | str) -> str:
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def register_converter(cls: type | str, fn: Converter) -> None:
    """Teach :func:`from_torch` a third-party norm class: ``fn(module)`` returns the normlab module computing the
    same function, holding ``module``'s very parameters. ``cls`` is the class or its ``"module.QualName"`` (so
    registering needs no import of the library that defines it).

    Example::

        >>> import torch, normlab
        >>> class MyRMSNorm(torch.nn.Module):
        ...     def __init__(self, d):
        ...         super().__init__()
        ...         self.weight, self.eps = torch.nn.Parameter(torch.ones(d)), 1e-6
        ...     def forward(self, x):
        ...         return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        >>> def convert(m):
        ...     new = normlab.nn.RMSNorm(m.weight.shape[0], eps=m.eps)
        ...     new.weight = m.weight
        ...     return new
        >>> normlab.register_converter(MyRMSNorm, convert)
        >>> normlab.from_torch(torch.nn.Sequential(MyRMSNorm(8)))[0]
        RMSNorm((8,), eps=1e-06, elementwise_affine=True)
    """
    if not callable(fn):
        raise TypeError(f"register_converter: fn must be callable, got {type(fn).__name__}")
    if not isinstance(cls, (str, type)):
        raise TypeError(f"register_converter: cls must be a class or a 'module.QualName' string, got {cls!r}")
    _CONVERTERS[_class_key(cls)] = fn


def converter_for(cls: type) -> Converter | None:
    """The converter registered for ``cls`` (or found for a copy of a known class, see :mod:`normlab.converters`)."""
    fn = _CONVERTERS.get(_class_key(cls))
    if fn is None and cls.__module__.startswith("transformers."):
        fn = converters.converter_for_copy(cls)
    return fn


def looks_like_norm(module: Module) -> bool:
    """A normalization layer by its class name (``...Norm...``) and shape (its own state, or no submodules), for the
    warning about what was left in place."""
    if "Norm" not in type(module).__name__:
        return False
    # a norm holds its own parameters or buffers, or has no submodules; a "NormMlpHead" container does neither
    own_state = any(t is not None for t in (*module._parameters.values(), *module._buffers.values()))
    return own_state or not module._modules


def _swap(
    model: Module,
    convert: Callable[[Module], Module | None],
    warn_if_left: Callable[[Module], bool],
    left: dict[str, int],
) -> Module:
    new = convert(model)
    if new is not None:
        return new
    if warn_if_left(model):
        left[type(model).__name__] = left.get(type(model).__name__, 0) + 1
    for name, child in model.named_children():
        new_child = _swap(child, convert, warn_if_left, left)
        if new_child is not child:
            setattr(model, name, new_child)
    return model


def _has_torch_semantics(module: Module) -> bool:
    """A normlab module with options torch's twin lacks (RMSNorm's weight_offset or casting_mode, LayerNorm's
    upcast) computes something else, so to_torch leaves it."""
    return not (
        getattr(module, "weight_offset", 0.0)
        or getattr(module, "casting_mode", "none") != "none"
        or getattr(module, "upcast", False)
    )


def _warn_left(fn: str, left: dict[str, int]) -> None:
    if left:
        listed = ", ".join(f"{name} ({n})" for name, n in sorted(left.items()))
        warnings.warn(
            f"{fn}: left in place, no conversion known: {listed}; normlab.register_converter(cls, fn) teaches it one",
            stacklevel=3,
        )


def _normlab_class(module: Module) -> bool:
    return type(module).__module__.startswith("normlab.")


def from_torch(model: Module) -> Module:
    """Replace, in place, every torch.nn normalization module in ``model`` by its normlab twin; return ``model``.

    Converts BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d, LayerNorm, GroupNorm and RMSNorm, and every
    class with a registered converter (:func:`register_converter`; shipped: Hugging Face's Llama-family, Gemma,
    T5 and OLMo norms). Outputs and gradients are unchanged. Norm classes it cannot convert are named in a
    warning, never skipped in silence. If ``model`` itself is a norm module, the twin is returned.
    """
    if not isinstance(model, Module):
        raise TypeError(f"from_torch: model must be a torch.nn.Module, got {type(model).__name__}")
    twins = dict(TWINS)

    def convert(m: Module) -> Module | None:
        if type(m) in twins:
            return _build_twin(m, twins[type(m)])
        fn = converter_for(type(m))
        return None if fn is None else fn(m)

    left: dict[str, int] = {}
    converted = _swap(model, convert, lambda m: looks_like_norm(m) and not _normlab_class(m), left)
    _warn_left("from_torch", left)
    return converted


def to_torch(model: Module) -> Module:
    """The reverse of :func:`from_torch`: every normlab twin in ``model`` becomes the torch.nn module again, and
    every norm+act module (``BatchNormAct2d``...) ``Sequential(norm, act)`` with the norm converted the same way
    (its state_dict keys gain the ``0.`` prefix of the Sequential). normlab modules torch has no class for (FRN,
    or an RMSNorm with a Gemma weight offset) stay, and are named in a warning."""
    if not isinstance(model, Module):
        raise TypeError(f"to_torch: model must be a torch.nn.Module, got {type(model).__name__}")
    back = {ours: theirs for theirs, ours in TWINS}

    def convert(m: Module) -> Module | None:
        if type(m) in _NORM_ACT_TYPES:
            norm, act = cast(Iterable[Module], split_norm_act(m))  # Sequential(norm, act)
            return torch.nn.Sequential(convert(norm) or norm, act)
        if type(m) in back and _has_torch_semantics(m):
            return _build_twin(m, back[type(m)])
        return None

    left: dict[str, int] = {}
    converted = _swap(model, convert, lambda m: _normlab_class(m) and looks_like_norm(m), left)
    _warn_left("to_torch", left)
    return converted
