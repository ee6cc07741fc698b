"""Argument checks shared by the functional API and the modules: clear errors instead of NaNs or deep ATen failures.

Every check raises ValueError (a bad value) or TypeError (a bad type) whose message names the function, the argument
and what was expected. All checks look at shapes, dtypes and Python numbers only, so they cost nothing under
``torch.compile`` and never synchronize with a GPU.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor


def check_floating(fn: str, input: Tensor, name: str = "input") -> None:
    if type(input) is Tensor and input.is_floating_point():
        return
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{fn}: {name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {input.dtype}"
        )


def check_eps(fn: str, eps: float | None, allow_none: bool = False) -> None:
    if type(eps) is float and 0.0 < eps < math.inf:  # the common case, kept cheap for small-tensor calls
        return
    if eps is None and allow_none:
        return
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a positive float, got {eps!r}")
    if not eps > 0 or math.isinf(eps):
        raise ValueError(f"{fn}: eps must be a positive finite float (it keeps 1/sqrt(var + eps) finite), got {eps}")


def check_batch_norm_eps(fn: str, eps: float, training: bool) -> None:
    """BatchNorm's eps as torch checks it, at forward: positive when the batch's statistics are used, non-negative
    with the running ones (``eps=0`` runs in eval, as in torch)."""
    if type(eps) is float and 0.0 < eps < math.inf:  # the common case, kept cheap for small-tensor calls
        return
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a float, got {eps!r}")
    if training and not eps > 0:
        raise ValueError(f"{fn}: eps must be positive during training (it keeps 1/sqrt(var + eps) finite), got {eps}")
    if not eps >= 0 or math.isinf(eps):
        raise ValueError(f"{fn}: eps must be non-negative and finite, got {eps}")


def check_real(fn: str, name: str, value: float) -> None:
    """A number (not a bool); its range is checked where it is used."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a float, got {value!r}")


def check_min_dim(fn: str, input: Tensor, min_dim: int, layout: str) -> None:
    if input.dim() < min_dim:
        raise ValueError(
            f"{fn}: expected input of shape {layout} with at least {min_dim} dims, got shape {tuple(input.shape)}"
        )


def check_per_channel(fn: str, channels: int, **tensors: Tensor | None) -> None:
    """Each given tensor must hold one value per channel (``input.shape[1]``)."""
    for name, t in tensors.items():
        if t is not None and t.numel() != channels:
            raise ValueError(
                f"{fn}: {name} has {t.numel()} elements (shape {tuple(t.shape)}), expected {channels}, "
                f"one per channel of the input (input.shape[1])"
            )


def check_channels(fn: str, input: Tensor, expected: int, arg: str = "num_features", dim: int = 1) -> None:
    if input.shape[dim] != expected:
        raise ValueError(
            f"{fn}: expected input with {expected} channels ({arg}) at dim {dim}, got {input.shape[dim]} in input of "
            f"shape {tuple(input.shape)}"
        )


def as_shape(fn: str, normalized_shape: int | Sequence[int] | torch.Size) -> tuple[int, ...]:
    if type(normalized_shape) is tuple and normalized_shape:  # modules pass their validated tuple
        return normalized_shape
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    try:
        # ints returned above (mypy does not know int is an Integral); a non-iterable raises the TypeError below
        shape = tuple(int(d) for d in cast("Sequence[int]", normalized_shape))
    except TypeError:
        raise TypeError(
            f"{fn}: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        ) from None
    if not shape:
        raise ValueError(f"{fn}: normalized_shape must have at least one dim, got {normalized_shape!r}")
    return shape


def check_trailing(fn: str, input: Tensor, normalized_shape: tuple[int, ...], **params: Tensor | None) -> None:
    k = len(normalized_shape)
    if input.dim() < k or input.shape[input.dim() - k :] != normalized_shape:
        raise ValueError(
            f"{fn}: normalized_shape {list(normalized_shape)} must equal the trailing dims of the input, "
            f"expected input of shape [*, {', '.join(map(str, normalized_shape))}], got {list(input.shape)}"
        )
    for name, p in params.items():
        if p is not None and tuple(p.shape) != normalized_shape:
            raise ValueError(f"{fn}: {name} must have shape {list(normalized_shape)}, got {list(p.shape)}")


def check_groups(fn: str, num_groups: int, channels: int) -> None:
    if type(num_groups) is int and num_groups > 0 and channels % num_groups == 0:
        return
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"{fn}: num_groups must be an int, got {num_groups!r}")
    if num_groups <= 0:
        raise ValueError(f"{fn}: num_groups must be positive, got {num_groups}")
    if channels % num_groups != 0:  # torch's words, so that code matching torch's message keeps working
        raise ValueError(f"{fn}: num_channels ({channels}) must be divisible by num_groups ({num_groups})")


def check_num_features(cls: str, num_features: int, arg: str = "num_features") -> None:
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
        raise TypeError(f"{cls}: {arg} must be an int, got {num_features!r}")
    if num_features < 0:
        raise ValueError(f"{cls}: {arg} must be non-negative, got {num_features}")
