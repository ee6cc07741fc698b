"""Swap a model's normalization layers between torch.nn and normlab, in place, both ways.

The twin takes over the very same Parameter and buffer objects (so an optimizer built before the swap keeps
working), the training flag, and with them the device and dtype. Only exact torch classes are converted: a
subclass (timm's BatchNormAct2d, say) has behaviour of its own that a plain twin would drop, so it is left alone.
"""

from __future__ import annotations

import inspect

import torch
from torch.nn import Module

from . import nn as nl
from .nn._state import carry_state
from .nn.norm_act import NORM_ACT_CLASSES, split_norm_act

__all__ = ["from_torch", "to_torch", "TWINS"]


def _torch_twins() -> list[tuple[type[Module], type[Module]]]:
    tn = torch.nn
    pairs = [
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
_NORM_ACT_TYPES = frozenset(NORM_ACT_CLASSES.values())
"""(torch class, normlab class) pairs that :func:`from_torch` and :func:`to_torch` convert between."""


def _hyperparameters(module: Module) -> dict:
    """Constructor arguments that rebuild ``module``'s configuration (parameters and buffers are carried apart)."""
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
        kw = dict(normalized_shape=module.normalized_shape, eps=module.eps, elementwise_affine=module.elementwise_affine)
    if hasattr(module, "process_group"):
        kw["process_group"] = module.process_group
    if "bias" in module._parameters and (getattr(module, "affine", None) or getattr(module, "elementwise_affine", None)):
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


def _swap(model: Module, table: dict[type[Module], type[Module]], split_act: bool = False) -> Module:
    if split_act and type(model) in _NORM_ACT_TYPES:
        norm, act = split_norm_act(model)
        return torch.nn.Sequential(_swap(norm, table), act)
    target = table.get(type(model))
    if target is not None:
        return _build_twin(model, target)
    for name, child in model.named_children():
        new_child = _swap(child, table, split_act)
        if new_child is not child:
            setattr(model, name, new_child)
    return model


def from_torch(model: Module) -> Module:
    """Replace, in place, every torch.nn normalization module in ``model`` by its normlab twin; return ``model``.

    Converts BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d, LayerNorm, GroupNorm and RMSNorm. Outputs and gradients are
    unchanged. If ``model`` itself is a norm module, the twin is returned (a module cannot replace itself).
    """
    if not isinstance(model, Module):
        raise TypeError(f"from_torch: model must be a torch.nn.Module, got {type(model).__name__}")
    return _swap(model, dict(TWINS))


def to_torch(model: Module) -> Module:
    """The reverse of :func:`from_torch`: every normlab twin in ``model`` becomes the torch.nn module again, and
    every norm+act module (``BatchNormAct2d``...) ``Sequential(norm, act)`` with the norm converted the same way
    (its state_dict keys gain the ``0.`` prefix of the Sequential)."""
    if not isinstance(model, Module):
        raise TypeError(f"to_torch: model must be a torch.nn.Module, got {type(model).__name__}")
    return _swap(model, {ours: theirs for theirs, ours in TWINS}, split_act=True)
