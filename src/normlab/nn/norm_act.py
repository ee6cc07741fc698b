"""Norm + activation as one module, as timm's ``BatchNormAct2d``: real classes, importable by name and picklable.

``BatchNormAct2d`` is a :class:`normlab.nn.BatchNorm2d` (a subclass, so ``isinstance`` checks and the norm's
``state_dict`` keys are unchanged) whose forward ends with ``self.act``. The activation is a child module: one with
parameters (``PReLU``) adds its own keys under ``act.``; the parameter-free ones add none. ``normlab.to_torch``
turns one back into ``Sequential(norm, act)``; :func:`split_norm_act` does that for a single module.

Every norm class (:data:`normlab.nn.norm_classes.NORM_CLASSES`) has its norm+act class here, named by inserting
``Act`` before the rank suffix: ``BatchNorm2d`` -> ``BatchNormAct2d``, ``GroupNorm`` -> ``GroupNormAct``.

Examples::

    >>> import pickle, torch, normlab, normlab.nn as nl
    >>> m = nl.BatchNormAct2d(8, act="silu")
    >>> isinstance(m, nl.BatchNorm2d), list(m.state_dict()) == list(nl.BatchNorm2d(8).state_dict())
    (True, True)
    >>> type(pickle.loads(pickle.dumps(m))).__name__
    'BatchNormAct2d'
    >>> normlab.create_norm("group", 8, num_groups=4, act="relu")
    GroupNormAct(
      4, 8, eps=1e-05, affine=True, bias=True
      (act): ReLU()
    )
    >>> normlab.to_torch(torch.nn.Sequential(m))[0]
    Sequential(
      (0): BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
      (1): SiLU()
    )
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor
from torch import nn as tnn

from .norm_classes import NORM_CLASSES

__all__ = ["ACTIVATIONS", "NORM_ACT_CLASSES", "make_activation", "norm_act_class", "with_activation", "split_norm_act"]

ACTIVATIONS: dict[str, Callable[[], tnn.Module]] = {
    "relu": tnn.ReLU,
    "gelu": tnn.GELU,
    "silu": tnn.SiLU,
    "swish": tnn.SiLU,
    "tanh": tnn.Tanh,
    "leaky_relu": tnn.LeakyReLU,
    "elu": tnn.ELU,
    "mish": tnn.Mish,
    "prelu": tnn.PReLU,
    "identity": tnn.Identity,
}


def make_activation(act: str | tnn.Module | type) -> tnn.Module:
    """A module from an activation name (see :data:`ACTIVATIONS`), a module class or a module."""
    if isinstance(act, tnn.Module):
        return act
    if isinstance(act, type) and issubclass(act, tnn.Module):
        return act()
    if isinstance(act, str) and act.lower() in ACTIVATIONS:
        return ACTIVATIONS[act.lower()]()
    raise ValueError(f"act must be a module, a module class or one of {sorted(ACTIVATIONS)}, got {act!r}")


def _as_class(module: tnn.Module, cls: type[tnn.Module]) -> tnn.Module:
    """A ``cls`` instance with ``module``'s configuration and its very parameters, buffers and submodules, in
    dicts of its own (adding or removing one leaves ``module`` as it was)."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for slot in ("_parameters", "_buffers", "_modules"):
        new.__dict__[slot] = dict(module.__dict__[slot])
    return new


if TYPE_CHECKING:  # the mixin is only ever combined with a norm class (a Module); at run time it extends object
    _MixinBase = tnn.Module
else:
    _MixinBase = object


class _NormActMixin(_MixinBase):
    """The forward and repr every norm+act class shares; ``norm_class`` is the norm it extends."""

    norm_class: type[tnn.Module]
    act: tnn.Module

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.norm_class.forward(self, input))

    @classmethod
    def from_norm(cls, norm: tnn.Module, act: str | tnn.Module | type = "relu") -> tnn.Module:
        """The norm+act module holding ``norm``'s very parameters and buffers (no copy) and its configuration."""
        if type(norm) is not cls.norm_class:
            raise TypeError(
                f"{cls.__name__}.from_norm: expected a {cls.norm_class.__name__}, got {type(norm).__name__}"
            )
        fused = _as_class(norm, cls)
        fused.act = make_activation(act)
        return fused

    def split(self) -> tuple[tnn.Module, tnn.Module]:
        """The plain norm (same parameters and buffers, no copy) and the activation."""
        norm = _as_class(self, self.norm_class)
        return norm, cast(tnn.Module, norm._modules.pop("act"))  # the activation the norm+act module holds

    @staticmethod
    def join(norm: tnn.Module, act: tnn.Module) -> tnn.Module:
        """``norm`` followed by ``act`` as norm+act module of ``norm``'s class."""
        return with_activation(norm, act)


def _act_name(norm_class: type) -> str:
    match = cast("re.Match[str]", re.fullmatch(r"(.*?)([123]d)?", norm_class.__name__))  # (.*?) matches any name
    base, rank = match.group(1), match.group(2) or ""
    return f"{base}Act{rank}"


def _define(norm_class: type[tnn.Module]) -> type[_NormActMixin]:
    name = _act_name(norm_class)

    def __init__(self: tnn.Module, *args: Any, act: str | tnn.Module | type = "relu", **kwargs: Any) -> None:
        norm_class.__init__(self, *args, **kwargs)
        self.act = make_activation(act)

    doc = (
        f"{norm_class.__name__} followed by an activation ``act`` (default ReLU), as one module.\n\n"
        f'    Takes {norm_class.__name__}\'s arguments plus ``act``: a name (``"relu"``, ``"gelu"``, '
        f'``"silu"``...), a module class or a module. Same state_dict keys as {norm_class.__name__} '
        f"(plus ``act.*`` for an activation with parameters).\n\n"
        f"    Shape:\n        - Input and output: as {norm_class.__name__}.\n\n"
        f"    Examples: see :mod:`normlab.nn.norm_act`.\n"
    )
    cls = type(name, (_NormActMixin, norm_class), {"__init__": __init__, "norm_class": norm_class, "__doc__": doc})
    cls.__module__ = __name__
    cls.__qualname__ = name
    return cls


NORM_ACT_CLASSES: dict[type, type[_NormActMixin]] = {norm: _define(norm) for norm in NORM_CLASSES}
"""norm class -> its norm+act class."""

globals().update({cls.__name__: cls for cls in NORM_ACT_CLASSES.values()})
__all__ += sorted(cls.__name__ for cls in NORM_ACT_CLASSES.values())


def norm_act_class(norm_class: type) -> type[_NormActMixin]:
    """The norm+act class of ``norm_class`` (``BatchNorm2d`` -> ``BatchNormAct2d``)."""
    if norm_class not in NORM_ACT_CLASSES:
        raise ValueError(
            f"no norm+act class for {norm_class.__name__}; normlab has them for "
            f"{', '.join(sorted(c.__name__ for c in NORM_ACT_CLASSES))}"
        )
    return NORM_ACT_CLASSES[norm_class]


def with_activation(norm: tnn.Module, act: str | tnn.Module | type) -> tnn.Module:
    """``norm`` followed by ``act`` as its norm+act class (the identity "norm" gives the activation alone)."""
    if type(norm) is tnn.Identity:
        return make_activation(act)
    return norm_act_class(type(norm)).from_norm(norm, act)


def split_norm_act(module: tnn.Module) -> tnn.Sequential:
    """The plain norm (same parameters and buffers) and its activation: ``Sequential(norm, act)``."""
    if not isinstance(module, _NormActMixin):
        raise TypeError(f"split_norm_act: expected a norm+act module, got {type(module).__name__}")
    return tnn.Sequential(*module.split())
