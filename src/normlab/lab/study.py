"""What a study is: a claim, the runs that test it, and an analysis that turns stored results into figures, a
table and verdicts. Verdicts come from the data by a stated criterion, never from the study's text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .store import RunRecord

__all__ = ["Options", "Study", "StudyResult", "Verdict", "compare", "group_by", "mean_spread", "seed_rows", "SPREAD_FACTOR"]

SPREAD_FACTOR = 2.0
CRITERION = (
    f"A difference counts when the two means differ in the claimed direction by more than {SPREAD_FACTOR:g}x the larger "
    "standard deviation over seeds (and by at least `min_effect`). The opposite difference by that margin contradicts "
    "the claim; anything smaller is 'not reproduced at this scale'. One seed cannot give a spread: 'inconclusive'."
)


@dataclass(frozen=True)
class Options:
    norms: tuple[str, ...] | None = None  # None: each study's defaults
    seeds: int | None = None
    full: bool = False
    device: str = "cpu"
    data: str | None = None  # "cifar10:PATH" / "mnist:PATH"
    nproc: int = 4  # ranks of the distributed study

    def describe(self) -> str:
        norms = ", ".join(self.norms) if self.norms else "each study's own"
        data = self.data or "embedded (MNIST-1D, digits, pydoc text)"
        return f"seeds {len(self.seed_list())}, norms: {norms}, {'full' if self.full else 'default'} settings, " \
               f"device {self.device}, data {data}, {self.nproc} ranks for the distributed study"

    def seed_list(self) -> list[int]:
        return list(range(self.seeds if self.seeds is not None else (5 if self.full else 2)))


@dataclass
class Verdict:
    claim: str
    outcome: str  # reproduced | not reproduced at this scale | contradicted | inconclusive
    evidence: str


@dataclass
class StudyResult:
    figures: list[str] = field(default_factory=list)
    table_headers: list[str] = field(default_factory=list)
    table_rows: list[list[str]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Study:
    name: str
    title: str
    claim: str
    source: str
    default_norms: tuple[str, ...]

    def norms(self, options: Options) -> tuple[str, ...]:
        return options.norms if options.norms else self.default_norms

    def configs(self, options: Options) -> list[dict[str, Any]]:
        raise NotImplementedError

    def analyze(self, records: list[RunRecord], figdir: Path, options: Options) -> StudyResult:
        raise NotImplementedError

    def setup(self, options: Options) -> str:
        raise NotImplementedError


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    m, s = mean_spread([v * scale for v in values])
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def compare(
    claim: str, higher: Sequence[float], lower: Sequence[float], label_hi: str, label_lo: str, min_effect: float = 0.0,
    unit: str = "",
) -> Verdict:
    """Verdict on "``higher`` exceeds ``lower``" by :data:`CRITERION`."""
    (m_hi, s_hi), (m_lo, s_lo) = mean_spread(higher), mean_spread(lower)
    if math.isnan(m_hi) or math.isnan(m_lo):
        return Verdict(claim, "inconclusive", "missing runs")
    effect = m_hi - m_lo
    spread = max(s_hi, s_lo)
    evidence = f"{label_hi} {m_hi:.4g}{unit} vs {label_lo} {m_lo:.4g}{unit}: difference {effect:+.4g}{unit}"
    if math.isnan(spread):
        return Verdict(claim, "inconclusive", evidence + "; one seed gives no spread")
    margin = max(SPREAD_FACTOR * spread, min_effect)
    evidence += f", margin {margin:.3g}{unit} ({SPREAD_FACTOR:g} x spread {spread:.3g})"
    if effect > margin:
        return Verdict(claim, "reproduced", evidence)
    if effect < -margin:
        return Verdict(claim, "contradicted", evidence)
    return Verdict(claim, "not reproduced at this scale", evidence)


def not_greater(
    claim: str, value: Sequence[float], reference: Sequence[float], label: str, label_ref: str,
    min_effect: float = 0.0, unit: str = "",
) -> Verdict:
    """Verdict on "``value`` is not greater than ``reference``": contradicted only by a difference that counts."""
    v = compare(claim, value, reference, label, label_ref, min_effect, unit)
    flipped = {"reproduced": "contradicted", "contradicted": "reproduced", "not reproduced at this scale": "reproduced"}
    return Verdict(claim, flipped.get(v.outcome, v.outcome), v.evidence)


def group_by(records: list[RunRecord], *keys: str) -> dict[tuple, list[RunRecord]]:
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.status == "done":
            groups.setdefault(tuple(r.config.get(k) for k in keys), []).append(r)
    return groups


def not_applicable_notes(records: list[RunRecord]) -> list[str]:
    seen = {}
    for r in records:
        if r.status == "not_applicable":
            seen.setdefault(r.config.get("norm"), r.note)
    return [f"`{norm}` was not run here: {note}" for norm, note in sorted(seen.items(), key=lambda kv: str(kv[0]))]


def seed_rows(by_x: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per-x lists of per-seed values -> one row per seed across x (nan where a run is missing), for plot_lines."""
    seeds = max((len(v) for v in by_x), default=0)
    return [[v[i] if i < len(v) else math.nan for v in by_x] for i in range(seeds)]


def plot_lines(ax, xs, groups: dict[str, list[list[float]]], logx: bool = False) -> None:
    """One line per label: the mean over seeds, shaded by the standard deviation."""
    for label, runs in groups.items():
        arr = np.asarray(runs, dtype=float)
        mean = np.nanmean(arr, axis=0)
        ax.plot(xs[: len(mean)], mean, marker="o", ms=3, label=label)
        if arr.shape[0] > 1:
            std = np.nanstd(arr, axis=0, ddof=1)
            ax.fill_between(xs[: len(mean)], mean - std, mean + std, alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def new_figure(ncols: int = 1, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)
    return fig, list(axes[0])


def save(fig, figdir: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(figdir / name, dpi=110)
    plt.close(fig)
    return name


def classify_config(study: str, options: Options, norm: str, seed: int, data: str = "mnist1d", **kw: Any) -> dict:
    """A classification run's configuration; ``--data`` replaces the study's embedded data set."""
    from .data import parse_data_spec

    kind, path = parse_data_spec(options.data)
    config = dict(study=study, task="classify", data=data if kind == "default" else kind, norm=norm, seed=seed,
                  device=options.device)  # fmt: skip
    config.update(kw)
    if path is not None:
        config["data_path"] = str(path)
    return config


def values(records: list[RunRecord], metric: str) -> list[float]:
    return [r.metrics[metric] for r in records if metric in r.metrics]
