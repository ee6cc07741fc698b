"""How a study's learning rates are chosen and what the report shows of it: the :class:`Selection` a study declares,
each tuned setting's :class:`Choice`, and the :class:`Fairness` summary (with each setting's :class:`BudgetRow`).
:class:`normlab.lab.judging.fairness.StudyPlan` runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..metrics import DIVERGED, VALID_ACC, VALID_BPC, VALID_LOSS

__all__ = [
    "Selection",
    "Choice",
    "BudgetRow",
    "Fairness",
    "Scoring",
    "VALIDATION_LOSS",
    "SELECTION_SEED_OFFSET",
    "lost_its_training",
]

SELECTION_SEED_OFFSET = 500  # selection seeds are first_seed + 500, + 501, ...: never a final run's seed
# task -> (validation metric, higher is better, display scale, what the report calls it)
Scoring = tuple[str, bool, float, str]
_SELECTION_METRIC: dict[str, Scoring] = {
    "classify": (VALID_ACC, True, 100.0, "validation accuracy (%)"),
    "char_lm": (VALID_BPC, False, 1.0, "validation bits per character"),
    "user": (VALID_ACC, True, 100.0, "validation accuracy (%)"),
}
VALIDATION_LOSS: Scoring = (VALID_LOSS, False, 1.0, "validation loss")  # the user's model with its own loss


def lost_its_training(metrics: dict[str, float], losses: list[float]) -> bool:
    """Whether a run could not hold its learning rate: its loss diverged, or it learned (its training loss fell
    below half its first value) and then collapsed back to at least 90% of that first value (an unnormalized net
    whose units all died at a rate it held for a shorter budget)."""
    if metrics.get(DIVERGED):
        return True
    if len(losses) < 2 or not losses[0] > 0:
        return False
    return min(losses) < 0.5 * losses[0] and losses[-1] >= 0.9 * losses[0]


@dataclass(frozen=True, kw_only=True)
class Selection:
    """How a study picks each compared setting's learning rate.

    Args:
        task: the runs of this task are tuned; the study's other runs keep their rate.
        factor: the ratio of neighbouring grid rates.
        below, above: the grid is the study's rate times ``factor**k`` for ``k`` from ``-below`` to ``above``.
        seeds: selection seeds per rate.
        budget: a selection run's share of the final runs' budget (1: the same).
        extensions: how many times a grid may grow past an edge that holds its best rate.
        halving: successive halving: every rate is screened at ``budget / 2**halving`` and only the better half
            (at least 2 rates) goes on, from its kept stable phase, to ``budget``, where the rate is chosen (0: every
            rate at ``budget``). Only a "wsd" run, whose shorter budgets branch off its longer ones, is screened.
        validation_fraction: the share of the training examples held out for validation (the language model has
            its own validation text).
        scoring: (validation metric, higher is better, display scale, axis label); None: the task's.
    """

    task: str = "classify"
    factor: float = 3.0
    below: int = 2
    above: int = 1
    seeds: int = 2
    budget: float = 0.5  # half the final runs' budget: the grids cost half, and a "wsd" run's best rate moves
    # little with its length (Hägele et al. 2024); every setting's grid is scored alike
    extensions: int = 2
    halving: int = 2  # screened at a quarter of the selection budget: a grid of 4 costs 2.6 whole runs, not 4
    # (4 screenings of 0.2 + a 0.05 cooldown; 2 going on from 0.2 to the whole budget, 0.6 + a 0.2 cooldown each)
    validation_fraction: float = 0.2
    scoring: Scoring | None = None

    def __post_init__(self) -> None:
        if self.below + self.above + 1 < 4 or self.factor <= 1:
            raise ValueError("Selection: the grid needs at least 4 log-spaced rates (factor > 1)")
        if self.halving < 0:
            raise ValueError(f"Selection: halving must be at least 0, got {self.halving}")

    @staticmethod
    def survivors(count: int) -> int:
        """How many of ``count`` screened rates go on: the better half, at least 2."""
        return max(2, math.ceil(count / 2))

    def grid(self, centre: float) -> list[float]:
        return [round_rate(centre * self.factor**k) for k in range(-self.below, self.above + 1)]

    @property
    def score(self) -> Scoring:
        return self.scoring or _SELECTION_METRIC[self.task]

    @property
    def metric(self) -> str:
        return self.score[0]

    def describe(self, halving: int | None = None) -> str:
        """The selection as the report states it; ``halving`` as applied (0 for runs that cannot be screened)."""
        halving = self.halving if halving is None else halving
        where = (
            f"the last {self.validation_fraction:.0%} of the training examples, held out"
            if self.task != "char_lm"
            else "the validation half of the held-out text"
        )
        budget = "the final runs' budget" if self.budget == 1 else f"{self.budget:g} of the final runs' budget"
        return (
            f"Learning rates are chosen per setting: a log-spaced grid of {self.below + self.above + 1} rates "
            f"(x{self.factor:g} apart) around the study's rate, grown past an edge that holds the best rate (at "
            f"most {self.extensions} times); each rate trains {self.seeds} selection seeds (seed "
            f"{SELECTION_SEED_OFFSET} and up from --first-seed, disjoint from the final seeds) at {budget} and "
            f"is scored on {where} (never the test set); the best mean {self.metric} is chosen and the final "
            "runs train at it."
            + (
                f" Successive halving: every rate is first screened at 1/{2**halving} of that budget (its own "
                "cooldown branched off the stable phase), and only the better half of the grid (at least 2 rates) "
                "trains on, from where its screening left the stable phase, to the whole selection budget, where "
                "the choice is made; a grid grows past an edge that holds its best screened rate."
                if halving
                else ""
            )
        )


def round_rate(lr: float) -> float:
    return float(f"{lr:.3g}")


@dataclass
class Choice:
    """One tuned setting's selection: the grid so far, the mean validation score at each rate, the rate chosen."""

    label: str
    grid: list[float]
    higher_is_better: bool
    scores: dict[float, float] = field(default_factory=dict)  # at the whole selection budget
    screening: dict[float, float] = field(default_factory=dict)  # at the screening budget (successive halving)
    survivors: list[float] = field(default_factory=list)  # the rates that went on from the screening
    extensions: int = 0
    chosen: float | None = None
    note: str = ""
    lowered: list[str] = field(default_factory=list)  # why the final runs' rate was lowered, each time
    unheld: list[float] = field(default_factory=list)  # the rates lowered from (their final runs are not judged)

    def best(self, scores: dict[float, float] | None = None) -> tuple[int, float] | None:
        """(grid index, rate) of the best finite score in ``scores`` (default: :attr:`scores`); None if none."""
        scores = self.scores if scores is None else scores
        ranked = self.ranked(scores)
        return (self.grid.index(ranked[0]), ranked[0]) if ranked else None

    def shortfall(self, rate: float, other: float) -> float | None:
        """How much worse ``other`` scored than ``rate`` in selection, relative to ``rate``'s score (negative:
        better), on the whole selection budget where both reached it, else as screened; None without both."""
        for scores in (self.scores, self.screening):
            a, b = scores.get(rate, math.nan), scores.get(other, math.nan)
            if math.isfinite(a) and math.isfinite(b) and a != 0:
                return (a - b if self.higher_is_better else b - a) / abs(a)
        return None

    def ranked(self, scores: dict[float, float]) -> list[float]:
        """The grid's rates with a finite score in ``scores``, best first (ties: the grid's order)."""
        sign = 1.0 if self.higher_is_better else -1.0
        scored = [lr for lr in self.grid if math.isfinite(scores.get(lr, math.nan))]
        return sorted(scored, key=lambda lr: -sign * scores[lr])  # stable: ties keep the grid's order


@dataclass
class BudgetRow:
    """One compared setting's mean target metric over its final seeds at each budget it trained at (doublings ->
    mean)."""

    label: str
    means: dict[int, float]


@dataclass
class Fairness:
    """What the report shows of a study's fairness: how rates were chosen and how far more training moves each
    setting."""

    selection: str = ""
    check: str = ""
    choices: list[Choice] = field(default_factory=list)
    budgets: list[BudgetRow] = field(default_factory=list)
    figure: str | None = None
    budget_figure: str | None = None
    score_scale: float = 1.0  # display scale of the validation scores (100: accuracy in %)
    check_scale: float = 1.0  # display scale of the target metric
