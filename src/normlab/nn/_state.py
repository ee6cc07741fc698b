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
