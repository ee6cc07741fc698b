"""Moving a module's parameters and buffers to another module class (conversions between twins)."""

from __future__ import annotations

from torch.nn import Module

__all__ = ["carry_state"]


def carry_state(source: Module, twin: Module) -> None:
    """Give ``twin`` the very parameter and buffer objects of ``source`` (no copy), and its training flag."""
    if set(source._parameters) != set(twin._parameters) or set(source._buffers) != set(twin._buffers):
        raise ValueError(
            f"cannot convert {type(source).__name__}: its parameters {sorted(source._parameters)} and buffers "
            f"{sorted(source._buffers)} do not match {type(twin).__name__}'s"
        )
    for name, param in source._parameters.items():
        twin._parameters[name] = param
    for name, buf in source._buffers.items():
        twin._buffers[name] = buf
    twin._non_persistent_buffers_set = set(source._non_persistent_buffers_set)
    twin.train(source.training)


# torch.fx's default tracer keeps a module as one call (a leaf) when its ``__module__`` starts with "torch.nn";
# otherwise it traces into forward, where normlab's argument checks (shape tests in Python) cannot run on proxies.
FX_LEAF_MODULE = "torch.nn.modules.normlab"


def trace_as_leaf(module: Module) -> None:
    """Make torch.fx's default tracer keep ``module`` as one ``call_module`` node, as it does torch's own norms.

    Set on the instance only: the class keeps its real ``__module__``, so pickling and imports are unaffected."""
    module.__dict__["__module__"] = FX_LEAF_MODULE
