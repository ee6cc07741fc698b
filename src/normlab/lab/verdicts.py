"""Verdicts: the judging step. Every outcome a study reports is an :class:`Outcome` decided here, by
:data:`CRITERION` (a paired test over seeds) or by a stated threshold (:func:`check`); no study writes one itself."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np

__all__ = [
    "Outcome", "Verdict", "Sample", "CRITERION", "CONFIDENCE", "compare", "not_greater", "check", "difference_test",
    "mean_spread",
]

CONFIDENCE = 0.95


class Outcome(str, Enum):
    """What the data say of a claim. A ``str`` enum: it is stored and compared as its text."""

    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced at this scale"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"
    NOT_TRAINED = "inconclusive: not trained"

    def __str__(self) -> str:
        return self.value


CRITERION = (
    "Runs are paired by seed (the same initialization of the shared layers and the same data order for every norm "
    "compared). A difference counts when a two-sided paired t-test on the per-seed differences rejects 'no "
    f"difference' at {CONFIDENCE:.0%} (|mean difference| > t(0.975, n-1) x its standard error) and the mean "
    "difference is at least `min_effect`; runs that cannot be paired are compared by Welch's t-test. A difference "
    "that counts in the claimed direction reproduces the claim, the opposite contradicts it, anything else is 'not "
    "reproduced at this scale'. One seed cannot give a spread: 'inconclusive'. A comparison that involves a setting "
    "that did not train (see Training) reads 'inconclusive: not trained'."
)


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: Outcome
    evidence: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))  # a stored text reads back as the type


class Sample(list):
    """Per-seed values of one metric for one setting, ordered by seed, with the seeds (for pairing), how many of
    the runs behind them belong to a setting that did not train, and why (``untrained_notes``)."""

    def __init__(self, values=(), seeds=(), untrained: int = 0, untrained_notes: Sequence[str] = ()) -> None:
        super().__init__(values)
        self.seeds = list(seeds)
        self.untrained = untrained
        self.untrained_notes = list(untrained_notes)

    def map(self, fn) -> "Sample":
        return Sample([fn(v) for v in self], self.seeds, self.untrained, self.untrained_notes)

    def minus(self, other: "Sample") -> "Sample":
        """Per-seed differences over the seeds both have."""
        mine, theirs = dict(zip(self.seeds, self)), dict(zip(other.seeds, other))
        common = [s for s in self.seeds if s in theirs]
        return Sample([mine[s] - theirs[s] for s in common], common, self.untrained + other.untrained,
                      _merged(self.untrained_notes, other.untrained_notes))  # fmt: skip


def _merged(a: Sequence[str], b: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def _t_critical(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def difference_test(higher: Sequence[float], lower: Sequence[float]) -> tuple[float, float, float, str] | None:
    """(mean difference, its standard error, the t critical value, how paired) for higher - lower; None when
    there are too few values for a spread."""
    if isinstance(higher, Sample) and isinstance(lower, Sample) and higher.seeds and lower.seeds:
        diffs = higher.minus(lower)
        if len(diffs) >= 2:
            d = np.asarray(diffs, dtype=float)
            return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), _t_critical(d.size - 1), \
                f"paired over {d.size} seeds"
    a, b = np.asarray(higher, dtype=float), np.asarray(lower, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / max(va**2 / (a.size - 1) + vb**2 / (b.size - 1), 1e-300) if se > 0 else a.size + b.size - 2
    return float(a.mean() - b.mean()), se, _t_critical(df), f"unpaired (Welch), n={a.size} and {b.size}"


def compare(
    claim: str, higher: Sequence[float], lower: Sequence[float], label_hi: str, label_lo: str, min_effect: float = 0.0,
    unit: str = "",
) -> Verdict:
    """Verdict on "``higher`` exceeds ``lower``" by :data:`CRITERION`."""
    (m_hi, _), (m_lo, _) = mean_spread(higher), mean_spread(lower)
    if math.isnan(m_hi) or math.isnan(m_lo):
        return Verdict(claim, Outcome.INCONCLUSIVE, "missing runs")
    evidence = f"{label_hi} {m_hi:.4g}{unit} vs {label_lo} {m_lo:.4g}{unit}"
    untrained = getattr(higher, "untrained", 0) + getattr(lower, "untrained", 0)
    test = difference_test(higher, lower)
    if test is None:
        return Verdict(claim, Outcome.INCONCLUSIVE, evidence + "; one seed gives no spread")
    effect, se, crit, how = test
    margin = max(crit * se, min_effect)
    evidence += (f": difference {effect:+.4g}{unit} ± {se:.2g} (standard error, {how}), needs more than "
                 f"{margin:.3g}{unit} (t {crit:.2f} x standard error, or min_effect {min_effect:g})")  # fmt: skip
    if untrained:
        notes = _merged(getattr(higher, "untrained_notes", []), getattr(lower, "untrained_notes", []))
        return Verdict(claim, Outcome.NOT_TRAINED, evidence + "; not trained: " + ("; ".join(notes) or
                       f"{untrained} of the runs compared had not converged"))  # fmt: skip
    if effect > margin:
        return Verdict(claim, Outcome.REPRODUCED, evidence)
    if effect < -margin:
        return Verdict(claim, Outcome.CONTRADICTED, evidence)
    return Verdict(claim, Outcome.NOT_REPRODUCED, evidence)


_NOT_GREATER = {Outcome.REPRODUCED: Outcome.CONTRADICTED, Outcome.CONTRADICTED: Outcome.REPRODUCED,
                Outcome.NOT_REPRODUCED: Outcome.REPRODUCED}  # fmt: skip


def not_greater(
    claim: str, value: Sequence[float], reference: Sequence[float], label: str, label_ref: str,
    min_effect: float = 0.0, unit: str = "",
) -> Verdict:
    """Verdict on "``value`` is not greater than ``reference``": contradicted only by a difference that counts."""
    v = compare(claim, value, reference, label, label_ref, min_effect, unit)
    return Verdict(claim, _NOT_GREATER.get(v.outcome, v.outcome), v.evidence)


def check(claim: str, holds: bool, evidence: str) -> Verdict:
    """Verdict on a claim decided by a stated threshold (exactness, determinism): reproduced or contradicted."""
    return Verdict(claim, Outcome.REPRODUCED if holds else Outcome.CONTRADICTED, evidence)
