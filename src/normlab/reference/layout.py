"""Which values each statistic is taken over: the Group Norm paper's sets S_i.

Every standardizing method views its input, by a C-order reshape, as a small-rank array and reduces some of that
view's axes. For an input of shape ``(N, C, *spatial)`` with ``S = prod(spatial)``:

==============  ======================  =============  =====================
method          view                    reduced axes   statistics per input
==============  ======================  =============  =====================
BatchNorm       ``(N, C, S)``           ``(0, 2)``     ``C``
InstanceNorm    ``(N, C, S)``           ``(2,)``       ``N*C``
GroupNorm(G)    ``(N, G, C/G*S)``       ``(2,)``       ``N*G``
LayerNorm(k)    ``(M, K)``              ``(1,)``       ``M`` (rows of the last k dims)
RMSNorm(k)      ``(M, K)``              ``(1,)``       ``M``, without centering
LayerNorm2d     ``(N, C, S)``           ``(1,)``       ``N*S`` (per position)
==============  ======================  =============  =====================

The same :class:`Layout` drives the reference math, ``normlab explain`` and its cube figure, so the figure cannot
disagree with the formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Layout",
    "batch_layout",
    "instance_layout",
    "ghost_layout",
    "group_layout",
    "layer_layout",
    "channel_layout",
]


@dataclass(frozen=True)
class Layout:
    """A C-order view of an input and the axes of that view that one statistic reduces over."""

    input_shape: tuple[int, ...]
    view: tuple[int, ...]
    axes: tuple[int, ...]
    batch_axes: tuple[int, ...] = (0,)  # the view's axes that index examples

    @property
    def kept_shape(self) -> tuple[int, ...]:
        """Shape of the statistics (the view with reduced axes removed)."""
        return tuple(d for i, d in enumerate(self.view) if i not in self.axes)

    @property
    def num_statistics(self) -> int:
        return math.prod(self.kept_shape)

    @property
    def values_per_statistic(self) -> int:
        return math.prod(self.view[i] for i in self.axes)

    @property
    def batch_dependent(self) -> bool:
        """True when one statistic mixes different examples: an axis that indexes examples is reduced."""
        return any(a in self.axes for a in self.batch_axes)

    def statistic_of(self, flat_index: np.ndarray) -> np.ndarray:
        """The index of the statistic that each input element (given by its C-order flat index) belongs to."""
        coords = np.unravel_index(np.asarray(flat_index), self.view)
        kept = [coords[i] for i in range(len(self.view)) if i not in self.axes]
        return np.ravel_multi_index(kept, self.kept_shape) if kept else np.zeros_like(flat_index)

    def statistic_index(self) -> np.ndarray:
        """An int array of ``input_shape``: for every input element, the index of the statistic it belongs to."""
        return self.statistic_of(np.arange(math.prod(self.input_shape))).reshape(self.input_shape)


def _spatial_size(shape: Sequence[int]) -> int:
    return math.prod(shape[2:])


def _require_channels(shape: Sequence[int]) -> None:
    if len(shape) < 2:
        raise ValueError(f"expected an input of shape (N, C, *spatial) with at least 2 dims, got shape {tuple(shape)}")


def batch_layout(shape: Sequence[int]) -> Layout:
    """BatchNorm: one statistic per channel, over the batch and all spatial positions."""
    _require_channels(shape)
    n, c = shape[0], shape[1]
    return Layout(tuple(shape), (n, c, _spatial_size(shape)), (0, 2))


def ghost_layout(shape: Sequence[int], virtual_batch_size: int) -> Layout:
    """Ghost BatchNorm: BatchNorm's sets within each virtual batch of ``virtual_batch_size`` consecutive examples."""
    _require_channels(shape)
    n, c = shape[0], shape[1]
    if virtual_batch_size <= 0 or n % virtual_batch_size:
        raise ValueError(f"virtual_batch_size ({virtual_batch_size}) must be a positive divisor of N ({n})")
    view = (n // virtual_batch_size, virtual_batch_size, c, _spatial_size(shape))
    return Layout(tuple(shape), view, (1, 3), batch_axes=(0, 1))


def instance_layout(shape: Sequence[int]) -> Layout:
    """InstanceNorm: one statistic per (example, channel), over spatial positions."""
    _require_channels(shape)
    n, c = shape[0], shape[1]
    return Layout(tuple(shape), (n, c, _spatial_size(shape)), (2,))


def group_layout(shape: Sequence[int], num_groups: int) -> Layout:
    """GroupNorm: one statistic per (example, group of C/G channels), over those channels and spatial positions."""
    _require_channels(shape)
    n, c = shape[0], shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise ValueError(f"num_groups ({num_groups}) must be a positive divisor of the channel count ({c})")
    return Layout(tuple(shape), (n, num_groups, (c // num_groups) * _spatial_size(shape)), (2,))


def layer_layout(shape: Sequence[int], normalized_shape: Sequence[int]) -> Layout:
    """LayerNorm / RMSNorm: one statistic per row, over the trailing ``normalized_shape`` dims."""
    k = len(normalized_shape)
    if k == 0 or tuple(shape[len(shape) - k :]) != tuple(normalized_shape) or k > len(shape):
        raise ValueError(
            f"normalized_shape {tuple(normalized_shape)} must equal the trailing dims of the input, "
            f"got shape {tuple(shape)}"
        )
    rows = math.prod(shape[: len(shape) - k])
    return Layout(tuple(shape), (rows, math.prod(normalized_shape)), (1,))


def channel_layout(shape: Sequence[int]) -> Layout:
    """LayerNorm2d / RMSNorm2d: one statistic per (example, position), over the C channels there."""
    _require_channels(shape)
    n, c = shape[0], shape[1]
    return Layout(tuple(shape), (n, c, _spatial_size(shape)), (1,))
