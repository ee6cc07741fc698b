"""Verdicts: the judging step. Every outcome a study reports is an :class:`Outcome` decided here, by
:data:`CRITERION` (a paired test over seeds) or by a stated threshold (:func:`check`); no study writes one itself."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

import numpy as np

__all__ = [
    "Outcome",
    "Verdict",
    "Sample",
    "CRITERION",
    "CONFIDENCE",
    "ROUNDING",
    "compare",
    "not_greater",
    "check",
    "difference_test",
    "mean_spread",
    "settle",
    "budget_name",
    "unsettled_reason",
    "MAX_DOUBLINGS",
    "Budgets",
]

CONFIDENCE = 0.95
MAX_DOUBLINGS = 3  # budgets T, 2T, 4T, 8T
# The metrics move in steps (a test error over 1000 examples in steps of 0.1 points, its mean over 5 seeds in steps
# of 0.02), so a mean difference can equal a threshold exactly, and the float rounding of the mean (-0.5000000000000006
# for an exact -0.5) must not decide on which side of it the difference falls: within this relative distance of a
# threshold, a value is equal to it.
ROUNDING = 1e-9


class Outcome(str, Enum):
    """What the data say of a claim. A ``str`` enum: it is stored and compared as its text."""

    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced at this scale"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"
    NOT_TRAINED = "inconclusive: not trained"  # the study's best setting missed its target
    CHANGES_WITH_BUDGET = "inconclusive: changes with budget"  # not settled by the largest budget

    def __str__(self) -> str:
        return self.value


CRITERION = (
    "Runs are paired by seed (the same initialization of the shared layers and the same data order for every norm "
    "compared). A difference counts when a two-sided paired t-test on the per-seed differences rejects 'no "
    f"difference' at {CONFIDENCE:.0%} (|mean difference| > t(0.975, n-1) x its standard error) and the mean "
    "difference is more than `min_effect` (a difference equal to a threshold up to float rounding is not more: the "
    "metrics move in steps, so a mean difference can equal one exactly); runs that cannot be paired are compared "
    "by Welch's t-test. A difference "
    "that counts in the claimed direction reproduces the claim, the opposite contradicts it, anything else is 'not "
    "reproduced at this scale'. A claim that one setting is as good as another (its error or loss is not higher) "
    "is a non-inferiority test: reproduced when the whole 95% interval of the difference lies below its tolerance "
    "(mean difference + t x standard error at most the tolerance, the study's minimum effect: worse by less than "
    "what counts), contradicted by a difference that counts against it, otherwise 'not reproduced at this scale' "
    "(too few seeds to tell). One seed cannot give a spread: 'inconclusive'. "
    "A verdict is what more training would not change: it is judged at the study's budget T and at 2T, each from "
    "all of its final seeds, and it is settled at T when both give the same outcome and the trend would not "
    "overturn it (the effect's change from T to 2T, repeated once more, keeps the outcome). Otherwise the settings "
    f"under it train again at 4T, then up to {2**MAX_DOUBLINGS}T, and the same rule applies to each pair of successive "
    "budgets (a budget still longer, trained for another verdict, must give the same outcome too: what was "
    "measured at it overrides the trend; a budget where too few of its runs trained to compare, as when they "
    "diverged there, confirms no outcome); a verdict still unsettled reads 'inconclusive: changes with budget', "
    "with its numbers at every "
    "budget and why it did not settle (how its difference moved per doubling, and what one more would read). "
    "A claim that involves no training (exactness, determinism) needs no budget. If a study's best setting "
    "misses its target, its verdicts read 'inconclusive: not trained'."
)


@dataclass(frozen=True)
class Verdict:
    """What the data say of ``claim``. A comparison's verdict keeps its numbers: ``effect`` (mean difference, higher
    minus lower), ``margin`` (what it must exceed), ``negated`` (a "not greater" claim) and ``settings`` (the
    settings it rests on, by :func:`normlab.lab.judging.fairness.trunk_key`); a judged one, its outcome at each budget
    (``history``: (doublings, outcome, effect) per budget T·2^d) and the budget it ``settled_at`` (None: it needs
    no budget, or did not settle). A "not greater" claim also keeps ``bound``: the largest difference that still
    reproduces it (its tolerance less t x the standard error)."""

    claim: str
    outcome: Outcome
    evidence: str
    effect: float | None = None
    margin: float | None = None
    negated: bool = False
    settings: tuple[str, ...] = ()
    history: tuple[tuple[int, str, float | None], ...] = ()
    settled_at: int | None = None
    bound: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))  # a stored text reads back as the type

    def outcome_for(self, effect: float) -> Outcome:
        """The outcome this comparison would have with ``effect`` (and its margin, and bound); an effect equal to a
        threshold up to float rounding (:data:`ROUNDING`) is on neither side of it: it does not exceed the margin,
        and it is at most the bound."""
        assert self.margin is not None
        if self.negated and self.bound is not None:  # non-inferiority: below the bound, or against by the margin
            return (
                Outcome.CONTRADICTED
                if _beyond(effect, self.margin)
                else Outcome.NOT_REPRODUCED
                if _beyond(effect, self.bound)
                else Outcome.REPRODUCED
            )
        raw = (
            Outcome.REPRODUCED
            if _beyond(effect, self.margin)
            else Outcome.CONTRADICTED
            if _beyond(-effect, self.margin)
            else Outcome.NOT_REPRODUCED
        )
        return _NOT_GREATER.get(raw, raw) if self.negated else raw


def _beyond(value: float, threshold: float) -> bool:
    """``value > threshold``, a value equal to the threshold up to float rounding (:data:`ROUNDING`) not beyond it."""
    return value > threshold + ROUNDING * max(1.0, abs(threshold))


class Sample(list):
    """Per-seed values of one metric for one setting, ordered by seed, with the seeds (for pairing) and the
    settings the values come from (``settings``: what a verdict drawn from them rests on)."""

    def __init__(self, values: Iterable[float] = (), seeds: Iterable[int] = (), settings: Sequence[str] = ()) -> None:
        super().__init__(values)
        self.seeds = list(seeds)
        self.settings = tuple(settings)

    def map(self, fn: Callable[[float], float]) -> Sample:
        return Sample([fn(v) for v in self], self.seeds, self.settings)

    def minus(self, other: Sample) -> Sample:
        """Per-seed differences over the seeds both have."""
        mine, theirs = dict(zip(self.seeds, self, strict=True)), dict(zip(other.seeds, other, strict=True))
        common = [s for s in self.seeds if s in theirs]
        return Sample([mine[s] - theirs[s] for s in common], common, _merged(self.settings, other.settings))


def _merged(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*a, *b]))


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
            return (
                float(d.mean()),
                float(d.std(ddof=1) / math.sqrt(d.size)),
                _t_critical(d.size - 1),
                f"paired over {d.size} seeds",
            )
    a, b = np.asarray(higher, dtype=float), np.asarray(lower, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / max(va**2 / (a.size - 1) + vb**2 / (b.size - 1), 1e-300) if se > 0 else a.size + b.size - 2
    return float(a.mean() - b.mean()), se, _t_critical(df), f"unpaired (Welch), n={a.size} and {b.size}"


def compare(
    claim: str,
    higher: Sequence[float],
    lower: Sequence[float],
    label_hi: str,
    label_lo: str,
    min_effect: float = 0.0,
    unit: str = "",
) -> Verdict:
    """Verdict on "``higher`` exceeds ``lower``" by :data:`CRITERION`."""
    (m_hi, _), (m_lo, _) = mean_spread(higher), mean_spread(lower)
    if math.isnan(m_hi) or math.isnan(m_lo):
        return Verdict(claim, Outcome.INCONCLUSIVE, "missing runs")
    evidence = f"{label_hi} {m_hi:.4g}{unit} vs {label_lo} {m_lo:.4g}{unit}"
    test = difference_test(higher, lower)
    if test is None:
        return Verdict(claim, Outcome.INCONCLUSIVE, evidence + "; one seed gives no spread")
    effect, se, crit, how = test
    margin = max(crit * se, min_effect)
    evidence += (
        f": difference {effect:+.4g}{unit} ± {se:.2g} (standard error, {how}), needs more than "
        f"{margin:.3g}{unit} (t {crit:.2f} x standard error, or min_effect {min_effect:g})"
    )
    settings = _merged(getattr(higher, "settings", ()), getattr(lower, "settings", ()))
    verdict = Verdict(claim, Outcome.INCONCLUSIVE, evidence, effect=effect, margin=margin, settings=settings)
    return dataclasses.replace(verdict, outcome=verdict.outcome_for(effect))


_NOT_GREATER = {  # a "not greater" verdict stored before it kept its bound (older results.json)
    Outcome.REPRODUCED: Outcome.CONTRADICTED,
    Outcome.CONTRADICTED: Outcome.REPRODUCED,
    Outcome.NOT_REPRODUCED: Outcome.REPRODUCED,
}


def not_greater(
    claim: str,
    value: Sequence[float],
    reference: Sequence[float],
    label: str,
    label_ref: str,
    min_effect: float = 0.0,
    unit: str = "",
) -> Verdict:
    """Verdict on "``value`` is not greater than ``reference``" (as good as), a non-inferiority test: reproduced when
    ``value - reference`` plus t x its standard error is at most ``min_effect`` (the tolerance: worse by less than
    a difference that counts, at 95%), contradicted by a difference that counts (as :func:`compare` judges
    ``value`` exceeding ``reference``), otherwise not reproduced at this scale."""
    v = compare(claim, value, reference, label, label_ref, min_effect, unit)
    test = difference_test(value, reference)
    if v.effect is None or test is None:
        return v
    _, se, crit, _ = test
    bound = min_effect - crit * se
    evidence = (
        v.evidence + f"; as good as needs the difference + t x standard error at most {min_effect:g}{unit} (the "
        f"difference at most {bound:.3g}{unit})"
    )
    verdict = dataclasses.replace(v, evidence=evidence, negated=True, bound=bound)
    return dataclasses.replace(verdict, outcome=verdict.outcome_for(v.effect))


def check(claim: str, holds: bool, evidence: str) -> Verdict:
    """Verdict on a claim decided by a stated threshold (exactness, determinism): reproduced or contradicted."""
    return Verdict(claim, Outcome.REPRODUCED if holds else Outcome.CONTRADICTED, evidence)


@dataclass(frozen=True, kw_only=True)
class Budgets:
    """How a study's verdicts are settled over budgets (:data:`~normlab.lab.judging.verdicts.CRITERION`): every compared
    setting trains at the study's budget T and at 2T, the settings under a verdict that is not settled up to
    T·2^``max_doublings``. ``scale`` and ``unit`` display the target metric."""

    max_doublings: int = MAX_DOUBLINGS
    scale: float = 100.0
    unit: str = " points of accuracy"

    def describe(self, metric: str) -> str:
        return (
            f"Every compared setting trains at the study's budget T and at 2T on all its final seeds, from one "
            "trajectory (a warmup-stable-decay schedule whose short cooldowns branch off at each budget). A "
            "verdict is settled at the first budget where it and the next agree and the trend would not "
            f"overturn it; the settings under an unsettled verdict train again at 4T, up to "
            f"{budget_name(self.max_doublings)}. The table gives each setting's mean {metric} at every budget "
            "it trained at: how far more training still moves it."
        )


def budget_name(doublings: int) -> str:
    """T, 2T, 4T...: the study's budget times 2**doublings."""
    return "T" if doublings == 0 else f"{2**doublings}T"


def settle(by_budget: dict[int, Verdict], last: int) -> tuple[Verdict, bool]:
    """One claim's verdict from its verdicts at budgets T·2^d (``by_budget``: d -> verdict), by :data:`CRITERION`,
    and whether it needs the next budget. Settled at the first d where d, d+1 and every longer budget measured
    agree and the trend (the effect's change from d to d+1, once more) keeps the outcome; with ``last`` (the
    largest d) reached and nothing settled, 'inconclusive: changes with budget'; otherwise the verdict at the
    largest budget so far, unsettled (``settled_at`` None), and True."""
    levels = sorted(by_budget)
    history = tuple((d, by_budget[d].outcome.value, by_budget[d].effect) for d in levels)
    first = by_budget[levels[0]]
    if first.effect is None and not first.settings:  # no comparison of trained settings: no budget to judge
        return dataclasses.replace(first, history=history[:1]), False
    for d in levels:
        if d + 1 not in by_budget:
            break
        a, b = by_budget[d], by_budget[d + 1]
        if a.outcome != b.outcome or any(by_budget[e].outcome != a.outcome for e in levels if e > d + 1):
            continue  # the budgets disagree, or a longer one (trained for another verdict) measured otherwise
        if first.effect is not None and (a.effect is None or b.effect is None):
            continue  # a comparison at T that a budget could not make (too few of its runs trained there)
        if a.effect is None or b.effect is None or b.outcome_for(2 * b.effect - a.effect) == b.outcome:
            trend = (
                ""
                if a.effect is None or b.effect is None
                else (f"; settled at {budget_name(d)}: {b.effect - a.effect:+.3g} per doubling would keep it")
            )
            return dataclasses.replace(a, history=history, settled_at=d, evidence=a.evidence + trend), False
    if levels[-1] < last:
        return dataclasses.replace(by_budget[levels[-1]], history=history), True
    numbers = "; ".join(f"{budget_name(d)}: {o}" + ("" if e is None else f" ({e:+.3g})") for d, o, e in history)
    final = by_budget[levels[-1]]
    changes = dataclasses.replace(
        final,
        outcome=Outcome.CHANGES_WITH_BUDGET,
        history=history,
        evidence=final.evidence + f"; by budget: {numbers}" + unsettled_reason(final, history),
    )
    return changes, False


def unsettled_reason(final: Verdict, history: Sequence[tuple[int, str, float | None]]) -> str:
    """Why a verdict judged at every budget did not settle, in words, from its ``history`` (doublings, outcome,
    effect): how its effect moved per doubling, and what one more doubling at the last rate of change would read
    (by ``final``'s margins). Empty when the effects are missing."""
    effects = [e for _, _, e in history]
    missing = [budget_name(d) for d, _, e in history if e is None]
    if missing and len(missing) < len(history):
        return (
            f". Why it is not settled: at {', '.join(missing)} there was no difference to test (too few of the runs "
            "it compares trained there: the study's notes say which diverged or collapsed), so no budget's outcome "
            "was confirmed by the next"
        )
    if len(effects) < 2 or missing or final.margin is None:
        return ""
    values = cast("list[float]", effects)
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    if all(d < 0 for d in steps) or all(d > 0 for d in steps):
        crossed = values[0] * values[-1] < 0
        towards = " toward 0 and past it" if crossed else " toward 0" if abs(values[-1]) < abs(values[0]) else ""
        trend = f"the difference {'falls' if steps[0] < 0 else 'rises'} at every doubling{towards}"
    else:
        trend = "the difference moves up and down with the budget (more than the seeds can pin down)"
    projected = values[-1] + steps[-1]
    return (
        f". Why it is not settled: {trend} ({', '.join(f'{e:+.3g}' for e in values)}); the last doubling moved it by "
        f"{steps[-1]:+.3g}, and once more would read '{final.outcome_for(projected)}' ({projected:+.3g}): at this "
        "scale the answer depends on how long the models train, so the report gives the numbers at every budget "
        "rather than one outcome"
    )
