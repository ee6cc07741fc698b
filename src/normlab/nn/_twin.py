"""The twin contract: what makes a normlab module stand in for a ``torch.nn`` class, in one place."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Module

__all__ = ["Twin", "FX_LEAF_MODULE", "torch_base"]

# torch.fx's default tracer keeps a module as one call (a leaf) when its ``__module__`` starts with "torch.nn".
FX_LEAF_MODULE = "torch.nn.modules.normlab"


class Twin(Module):
    """Base of every ``normlab.nn`` layer (the weight parametrizations aside). A twin of a torch class names it
    before the torch class (``class LayerNorm(Twin, torch.nn.LayerNorm)``; BatchNorm's through ``_NormBase(Twin)``),
    so that ``super()`` reaches Twin first: the twin is an instance of torch's class, with torch's ``state_dict``,
    and normlab's forward. Twin does three things:

    - **``__init__`` is Module's, not the torch parent's.** ``super().__init__()`` in a twin reaches this one, which
      stops there: the twin's constructor builds the very parameters and buffers torch's does (names, shapes,
      dtypes, initial values) under normlab's argument checks and messages, and torch's ``__init__`` would build
      and initialize them first, a second time, under its own checks. A layer that does run its torch parent's
      ``__init__`` (``StdConv2d``: the conv is torch's, only the forward differs) calls :meth:`_trace_as_leaf`
      itself.
    - **``_load_from_state_dict`` is Module's, not the torch parent's.** A twin whose torch class handles old
      checkpoint versions does that handling in its own override (BatchNorm's ``num_batches_tracked``, absent
      before version 2; InstanceNorm's running stats from before torch 0.4), then calls ``super()``, which lands
      here. Running torch's override as well would repeat it, and tie the twin's loading to torch's private base
      classes. The version a checkpoint records (``_version``) is the torch class's, by inheritance.
    - **Each instance's ``__module__`` is** :data:`FX_LEAF_MODULE` (:meth:`_trace_as_leaf`). torch.fx's default
      tracer keeps a module whose ``__module__`` starts with ``"torch.nn"`` as one ``call_module`` node, as it
      keeps torch's own norms, and traces into any other, where normlab's argument checks (Python tests on shapes)
      cannot run on proxies. Set on the instance only: the class keeps its real ``__module__``, so pickling (by
      class reference) and imports are unaffected.
    """

    _checked: tuple | None = None
    """The last input signature (shape, dtype, ...) whose arguments passed the forward's checks: the checks look at
    shapes, dtypes and Python numbers only, so a twin runs them again only when its signature changes."""

    def __init__(self) -> None:
        Module.__init__(self)  # not super().__init__(): after Twin in the MRO comes the torch class's __init__
        self._trace_as_leaf()

    def _checks_passed(self, signature: tuple) -> None:
        """Remember ``signature`` as checked (not while compiling: there the checks cost nothing, and a changing
        attribute would only add guards)."""
        if not torch.compiler.is_compiling():
            self.__dict__["_checked"] = signature

    def _trace_as_leaf(self) -> None:
        self.__dict__["__module__"] = FX_LEAF_MODULE

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        Module._load_from_state_dict(  # not super(): the torch class's override is the twin's own, done already
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def torch_base(cls: type) -> type | None:
    """The ``torch.nn`` class that the normlab class ``cls`` names as a base, the class it is a twin of
    (``normlab.nn.BatchNorm2d`` -> ``torch.nn.BatchNorm2d``); None for a class that extends none directly (a
    twin's subclass such as ``LayerNorm2d`` or ``BatchNormAct2d``, torch's own classes, the catalog's others)."""
    if not issubclass(cls, Twin):
        return None
    return next((base for base in cls.__bases__ if base.__module__.startswith("torch.nn")), None)
