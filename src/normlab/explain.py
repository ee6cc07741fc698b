"""``normlab explain``: which values each statistic is taken over, for any method and input shape.

Every number comes from the same :class:`~normlab.reference.layout.Layout` the float64 reference computes with,
and the cube figure (the Group Norm paper's Figure 2: N, C and H·W axes, one statistic's set shaded) is drawn from
that layout's statistic index, so text, figure and math cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .method import Method
from .reference.layout import Layout
from .registry import get_method

__all__ = ["Explanation", "explain", "draw_cube", "parse_shape"]


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"8,64,32,32"`` (or a sequence) -> ``(8, 64, 32, 32)``; ValueError for anything else."""
    parts = text.replace("x", ",").split(",") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be comma-separated positive integers like 8,64,32,32, got {text!r}") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise ValueError(f"shape must have at least 2 positive dims (N, C, *spatial), got {text!r}")
    return shape


def _axis_names(ndim: int) -> list[str]:
    spatial = {0: [], 1: ["L"], 2: ["H", "W"], 3: ["D", "H", "W"]}.get(ndim - 2)
    return ["N", "C"] + (spatial if spatial is not None else [f"S{i}" for i in range(ndim - 2)])


@dataclass(frozen=True)
class Explanation:
    method: Method
    shape: tuple[int, ...]
    layout: Layout | None  # None: the method takes no statistics over sets of values
    over: list[tuple[str, int]]  # factors of the values per statistic
    count: list[tuple[str, int]]  # factors of the number of statistics
    num_groups: int | None = None
    virtual_batch_size: int | None = None

    @property
    def config(self) -> str:
        if self.num_groups is not None:
            return f"num_groups={self.num_groups}"
        if self.virtual_batch_size is not None:
            return f"virtual_batch_size={self.virtual_batch_size}"
        return ""

    def text(self) -> str:
        names = _axis_names(len(self.shape))
        dims = ", ".join(f"{n}={d}" for n, d in zip(names, self.shape, strict=True))
        config = f" ({self.config})" if self.config else ""
        kind = "means and as many variances" if self.method.center else "mean squares (no centering)"
        lines = [f"{self.method.title}{config} on input ({dims})"]
        if self.layout is None:
            lines.append("  reduces over: nothing; no statistics over sets of values")
        else:
            lines += [
                f"  reduces over: {_product(self.over)} values per statistic",
                f"  statistics:   {self.layout.num_statistics} {kind}, one per {_index(self.count)}: "
                f"{_product(self.count)}",
            ]
        lines += [
            f"  batch-dependent: {self.method.dependence_text}",
            f"  train/eval:   {self.method.train_eval}",
            f"  formula:      {self.method.formula}",
        ]
        if self.method.fused_activation:
            lines.append("  activation:   built in (it replaces the norm and the activation after it)")
        lines.append(f"  paper:        {self.method.paper}")
        return "\n".join(lines)


def _index(factors: list[tuple[str, int]]) -> str:
    names = [n.lower() for n, _ in factors]
    return names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"


def _product(factors: list[tuple[str, int]]) -> str:
    total = math.prod(d for _, d in factors)
    if len(factors) == 1:
        return f"{factors[0][0]} = {total}"
    names = "·".join(n for n, _ in factors)
    values = "·".join(str(d) for _, d in factors)
    return f"{names} = {values} = {total}"


def explain(
    name: str,
    shape: str | Sequence[int],
    num_groups: int | None = None,
    virtual_batch_size: int | None = None,
    normalized_dims: int | None = None,
) -> Explanation:
    """Describe the method ``name`` on an input of ``shape``, from its registry record and its statistics' layout
    (the record's :class:`~normlab.method.StatisticsLayout`).

    Args:
        name: any registered norm (``normlab norms`` lists them) or alias.
        shape: ``(N, C, *spatial)`` as ints or ``"8,64,32,32"``.
        num_groups: the group count G for grouped methods (default 32).
        virtual_batch_size: Ghost BatchNorm's virtual batch (default 32, capped at N).
        normalized_dims: for LayerNorm/RMSNorm, how many trailing dims are normalized (default: all but N).

    Example::

        >>> from normlab.explain import explain
        >>> print(explain("group", "8,64,32,32", num_groups=32).text().splitlines()[1])
          reduces over: C/G·H·W = 2·32·32 = 2048 values per statistic
    """
    method = get_method(name)
    shape = parse_shape(shape)
    sets = method.statistics
    sized_by = None if sets is None else sets.sized_by
    if method.grouped:
        num_groups = 32 if num_groups is None else num_groups
    elif num_groups is not None:
        raise ValueError(f"explain: num_groups applies to grouped methods only, not {method.title}")
    if sized_by == "virtual_batch_size":
        virtual_batch_size = min(32, shape[0]) if virtual_batch_size is None else virtual_batch_size
        if virtual_batch_size <= 0 or shape[0] % virtual_batch_size:
            raise ValueError(f"explain: the virtual batch size ({virtual_batch_size}) must divide N ({shape[0]})")
    elif virtual_batch_size is not None:
        raise ValueError(f"explain: virtual_batch_size applies to Ghost BatchNorm only, not {method.title}")
    if sized_by == "normalized_dims":
        normalized_dims = len(shape) - 1 if normalized_dims is None else normalized_dims
        if not 1 <= normalized_dims <= len(shape) - 1:
            raise ValueError(f"explain: normalized_dims must be in [1, {len(shape) - 1}], got {normalized_dims}")
    elif normalized_dims is not None:
        raise ValueError("explain: normalized_dims applies to LayerNorm and RMSNorm only")
    if 0 not in method.spatial_dims and len(shape) < 3:
        raise ValueError(f"explain: {method.title} needs at least one spatial dim (shape N,C,L or longer)")
    if sets is None:
        return Explanation(method, shape, None, [], [], num_groups, virtual_batch_size)
    settings = {"num_groups": num_groups, "virtual_batch_size": virtual_batch_size, "normalized_dims": normalized_dims}
    size = settings[sized_by] if sized_by else None
    over, count = sets.factors(list(zip(_axis_names(len(shape)), shape, strict=True)), size)
    return Explanation(method, shape, sets.layout(shape, size), over, count, num_groups, virtual_batch_size)


def first_set_mask(layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Membership of the first statistic's set along the (N, C, S) axes of the input.

    Every layout's set is a product of index ranges in (N, C, S) coordinates, so three 1-D masks describe it
    without materializing the whole input.
    """
    n, c = layout.input_shape[:2]
    s = math.prod(layout.input_shape[2:])

    def along(count: int, stride: int) -> np.ndarray:
        return layout.statistic_of(np.arange(count) * stride) == 0

    return along(n, c * s), along(c, s), along(s, 1)


def _bin(mask: np.ndarray, max_cells: int) -> np.ndarray:
    """Fractions of members per cell, merging neighbours by the smallest divisor that fits ``max_cells``."""
    size = next(b for b in range(1, len(mask) + 1) if len(mask) % b == 0 and len(mask) // b <= max_cells)
    return mask.reshape(-1, size).mean(axis=1)


def draw_cube(explanation: Explanation, path: str | Path) -> Path:
    """Save the Group Norm paper's cube for this configuration: N, C, H·W axes, the first statistic's set shaded.

    Cells that merge several indices (large axes) are shaded in proportion to the share of members they hold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = explanation.layout
    if layout is None:
        raise ValueError(
            f"explain: {explanation.method.title} takes no statistics over sets of values: no cube to draw"
        )
    fractions = [_bin(m, cap) for m, cap in zip(first_set_mask(layout), (8, 16, 8), strict=True)]
    frac = np.einsum("i,j,k->ijk", *fractions)
    filled = np.ones(frac.shape, dtype=bool)
    colors = np.empty(frac.shape + (4,))
    colors[...] = (0.85, 0.85, 0.85, 0.15)
    colors[frac >= 1.0] = (0.18, 0.42, 0.85, 0.9)
    partial = (frac > 0) & (frac < 1.0)
    colors[partial] = (0.55, 0.7, 0.95, 0.6)

    fig = plt.figure(figsize=(5.5, 5))
    ax = fig.add_subplot(projection="3d")
    ax.voxels(filled, facecolors=colors, edgecolor=(0.3, 0.3, 0.3, 0.4), linewidth=0.3)
    n, c = explanation.shape[:2]
    s = math.prod(explanation.shape[2:])
    spatial = "·".join(_axis_names(len(explanation.shape))[2:]) or "1"
    ax.set_xlabel(f"N ({n})")
    ax.set_ylabel(f"C ({c})")
    ax.set_zlabel(f"{spatial} ({s})")
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
    config = f", {explanation.config}" if explanation.config else ""
    ax.set_title(
        f"{explanation.method.title}{config} on {tuple(explanation.shape)}\n"
        f"{layout.num_statistics} statistics, each over {layout.values_per_statistic} values",
        fontsize=10,
    )
    if partial.any():
        fig.text(0.02, 0.02, "light cells: partly in the set (cells merge neighbouring indices)", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
