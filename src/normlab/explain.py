"""``normlab explain``: which values each statistic is taken over, for any method and input shape.

Every number comes from the same :class:`~normlab.reference.layout.Layout` the float64 reference computes with,
and the cube figure (the Group Norm paper's Figure 2: N, C and H·W axes, one statistic's set shaded) is drawn from
that layout's statistic index, so text, figure and math cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .reference.layout import Layout, batch_layout, ghost_layout, group_layout, instance_layout, layer_layout
from .registry import canonical_name

__all__ = ["Explanation", "explain", "draw_cube", "parse_shape"]

_STANDARDIZE = r"y = (x - mean) / sqrt(var + eps) * gamma + beta"


@dataclass(frozen=True)
class _Method:
    title: str
    batch_dependent: str
    train_eval: str
    formula: str
    sets: str | None = "batch"  # which statistic sets: batch, instance, group, layer, ghost; None: no statistics
    center: bool = True


_PER_EXAMPLE = "no: each statistic uses one example only"
_SAME = "identical in training and eval"
_BN_TRAIN_EVAL = (
    "training normalizes with the batch statistics and updates running estimates (unbiased variance); eval "
    "normalizes with the running estimates"
)

_METHODS: dict[str, _Method] = {
    "batch": _Method(
        "BatchNorm",
        "yes: each statistic mixes all N examples, so in training an example's output depends on the rest of its "
        "batch (and is undefined with one value per channel)",
        _BN_TRAIN_EVAL,
        _STANDARDIZE + "   (mean, var per channel over N and spatial)",
    ),
    "layer": _Method("LayerNorm", _PER_EXAMPLE, _SAME,
                     _STANDARDIZE + "   (mean, var per example over the normalized dims)", "layer"),
    "instance": _Method(
        "InstanceNorm", "no: each statistic uses one channel of one example",
        "identical in training and eval by default; with track_running_stats=True eval uses running estimates",
        _STANDARDIZE + "   (mean, var per example and channel over spatial)", "instance",
    ),
    "group": _Method(
        "GroupNorm", "no: each statistic uses one group of channels of one example", _SAME,
        _STANDARDIZE + "   (mean, var per example and group of C/G channels over those channels and spatial)", "group",
    ),
    "rms": _Method("RMSNorm", _PER_EXAMPLE, _SAME, "y = x / sqrt(mean(x^2) + eps) * gamma   (no centering, no bias)",
                   "layer", center=False),
    "batchrenorm": _Method(
        "Batch Renormalization", "yes: batch statistics, corrected towards the running ones by r and d",
        _BN_TRAIN_EVAL, "y = gamma * ((x - mu_B)/sigma_B * r + d) + beta,  r = clip(sigma_B/sigma, 1/r_max, r_max), "
        "d = clip((mu_B - mu)/sigma, -d_max, d_max), no gradient through r, d",
    ),
    "ghost": _Method(
        "Ghost BatchNorm", "yes, within each virtual batch of examples", _BN_TRAIN_EVAL,
        _STANDARDIZE + "   (BatchNorm over each virtual batch separately)", "ghost",
    ),
    "power": _Method(
        "PowerNorm", "yes, through the running quadratic mean updated by every batch",
        "training divides by the running quadratic mean of earlier batches (then updates it); eval by the final one",
        "y = gamma * x / sqrt(psi + eps) + beta,  psi <- a psi + (1 - a) mean(x^2)  (approximate backward)",
        center=False,
    ),
    "frn": _Method("Filter Response Normalization", "no: each statistic uses one channel of one example", _SAME,
                   "y = max(gamma * x / sqrt(mean(x^2) + |eps|) + beta, tau)   (TLU)", "instance", center=False),
    "evonorm_b0": _Method(
        "EvoNorm-B0", "yes: the batch variance enters the denominator",
        "training uses the batch variance and updates running_var; eval uses running_var",
        "y = gamma * x / max(sqrt(var_batch + eps), v1 * x + sqrt(var_instance + eps)) + beta",
    ),
    "evonorm_s0": _Method("EvoNorm-S0", "no: each statistic uses one group of channels of one example", _SAME,
                          "y = gamma * x * sigmoid(v1 * x) / sqrt(var_group + eps) + beta", "group"),
    "switchable": _Method(
        "Switchable Normalization", "yes, through its BatchNorm part (learned weight)",
        "training uses batch statistics for the BN part; eval uses running estimates for it",
        "mean = sum_k w_k mean_k, var = sum_k w'_k var_k over k in {IN, LN, BN} (softmax weights); shaded: the BN sets",
    ),
    "dyt": _Method("DyT (Dynamic Tanh)", "no: elementwise", _SAME, "y = gamma * tanh(alpha * x) + beta", None),
    "lrn": _Method("Local Response Normalization", "no: a window of neighbouring channels of one position", _SAME,
                   "b_c = a_c / (k + alpha/n * sum over n neighbouring channels of a^2)^beta  (overlapping windows)",
                   None),
    "frozen": _Method("FrozenBatchNorm2d", "no: fixed statistics", _SAME,
                      "y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, all buffers", None),
    "ws": _Method("Weight Standardization + GroupNorm", "no", _SAME,
                  "each conv filter w_o -> (w_o - mean(w_o)) / std(w_o); shaded: the GroupNorm sets after it", "group"),
    "spectral": _Method("Spectral Normalization", "no: it normalizes weights", _SAME,
                        "W -> W / sigma_max(W) (power iteration)", None),
    "none": _Method("no normalization", "no", _SAME, "y = x", None),
}


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
    method: str
    shape: tuple[int, ...]
    layout: Layout | None  # None: the method takes no statistics over sets of values
    over: list[tuple[str, int]]  # factors of the values per statistic
    count: list[tuple[str, int]]  # factors of the number of statistics
    info: _Method
    groups: int | None

    def text(self) -> str:
        names = _axis_names(len(self.shape))
        dims = ", ".join(f"{n}={d}" for n, d in zip(names, self.shape))
        label = "virtual_batch_size" if self.info.sets == "ghost" else "num_groups"
        config = f" ({label}={self.groups})" if self.groups is not None else ""
        kind = "means and as many variances" if self.info.center else "mean squares (no centering)"
        lines = [f"{self.info.title}{config} on input ({dims})"]
        if self.layout is None:
            lines.append("  reduces over: nothing; no statistics over sets of values")
        else:
            lines += [
                f"  reduces over: {_product(self.over)} values per statistic",
                f"  statistics:   {self.layout.num_statistics} {kind}, one per {_index(self.count)}: "
                f"{_product(self.count)}",
            ]
        lines += [
            f"  batch-dependent: {self.info.batch_dependent}",
            f"  train/eval:   {self.info.train_eval}",
            f"  formula:      {self.info.formula}",
        ]
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


def _factors(sets: str, shape: tuple[int, ...], groups: int | None, normalized_dims: int) -> tuple[list, list]:
    names = _axis_names(len(shape))
    named = list(zip(names, shape))
    spatial = named[2:]
    if sets == "batch":
        return [named[0]] + spatial, [named[1]]
    if sets == "ghost":
        return [("V", groups)] + spatial, [("N/V", shape[0] // groups), named[1]]
    if sets == "instance":
        return spatial, named[:2]
    if sets == "group":
        return [("C/G", shape[1] // groups)] + spatial, [named[0], ("G", groups)]
    split = len(shape) - normalized_dims
    return named[split:], named[:split]


def _layout(sets: str, shape: tuple[int, ...], groups: int | None, normalized_dims: int) -> Layout:
    if sets == "batch":
        return batch_layout(shape)
    if sets == "ghost":
        return ghost_layout(shape, groups)
    if sets == "instance":
        return instance_layout(shape)
    if sets == "group":
        return group_layout(shape, groups)
    return layer_layout(shape, shape[len(shape) - normalized_dims :])


def explain(
    name: str, shape: str | Sequence[int], groups: int | None = None, normalized_dims: int | None = None
) -> Explanation:
    """Describe the method ``name`` on an input of ``shape``.

    Args:
        name: any registered norm (``normlab norms`` lists them) or alias.
        shape: ``(N, C, *spatial)`` as ints or ``"8,64,32,32"``.
        groups: the group count G for GroupNorm-like methods (default 32), or the virtual batch size for Ghost
            BatchNorm (default 32, capped at N); not accepted by other methods.
        normalized_dims: for LayerNorm/RMSNorm, how many trailing dims are normalized (default: all but N).
    """
    method = canonical_name(name)
    info = _METHODS[method]
    shape = parse_shape(shape)
    if info.sets == "group":
        groups = 32 if groups is None else groups
    elif info.sets == "ghost":
        groups = min(32, shape[0]) if groups is None else groups
        if groups <= 0 or shape[0] % groups:
            raise ValueError(f"explain: the virtual batch size ({groups}) must divide N ({shape[0]})")
    elif groups is not None:
        raise ValueError(f"explain: --groups applies to GroupNorm-like methods and Ghost BN only, not {info.title}")
    if info.sets == "layer":
        normalized_dims = len(shape) - 1 if normalized_dims is None else normalized_dims
        if not 1 <= normalized_dims <= len(shape) - 1:
            raise ValueError(f"explain: normalized_dims must be in [1, {len(shape) - 1}], got {normalized_dims}")
    elif normalized_dims is not None:
        raise ValueError("explain: normalized_dims applies to LayerNorm and RMSNorm only")
    if info.sets in ("instance",) and len(shape) < 3:
        raise ValueError(f"explain: {info.title} needs at least one spatial dim (shape N,C,L or longer)")
    if info.sets is None:
        return Explanation(method, shape, None, [], [], info, groups)
    layout = _layout(info.sets, shape, groups, normalized_dims or 0)
    over, count = _factors(info.sets, shape, groups, normalized_dims or 0)
    return Explanation(method, shape, layout, over, count, info, groups)


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
        raise ValueError(f"explain: {explanation.info.title} takes no statistics over sets of values: no cube to draw")
    fractions = [_bin(m, cap) for m, cap in zip(first_set_mask(layout), (8, 16, 8))]
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
    config = f", {'V' if explanation.info.sets == 'ghost' else 'G'}={explanation.groups}" if explanation.groups else ""
    ax.set_title(
        f"{explanation.info.title}{config} on {tuple(explanation.shape)}\n"
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
