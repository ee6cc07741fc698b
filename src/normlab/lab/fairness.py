"""Fair comparisons: every compared setting at its own learning rate, trained until more training changes nothing.

A study that compares methods declares a :class:`Selection`. Each of its settings (a configuration but for its seed
and learning rate) first trains at every rate of a log-spaced grid around the study's own rate, on seeds of its own
(disjoint from the final seeds) and with a validation split held out of the training data; the rate with the best
mean validation score is chosen, and a grid whose best rate sits on its edge grows past that edge. The final runs
train at the chosen rate. Then every compared setting (tuned or not) is trained again with twice its budget (the
same schedule, stretched) on its first seeds: it has trained when that moves its mean metric by less than the
study's :class:`BudgetCheck` tolerance; a verdict that rests on a setting that moved more reads "inconclusive: not
trained", with both numbers.

:class:`StudyPlan` holds one study's runs in that order; ``normlab.lab.compare`` runs its rounds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import VALID_ACC, VALID_BPC, VALID_LOSS
from .store import RunRecord, config_key

__all__ = ["Selection", "BudgetCheck", "StudyPlan", "Choice", "BudgetResult", "Fairness", "SELECTION_SEED_OFFSET"]

SELECTION_SEED_OFFSET = 500  # selection seeds are first_seed + 500, + 501, ...: never a final run's seed
# task -> (validation metric, higher is better, display scale, what the report calls it)
Scoring = tuple[str, bool, float, str]
_SELECTION_METRIC: dict[str, Scoring] = {"classify": (VALID_ACC, True, 100.0, "validation accuracy (%)"),
                                         "char_lm": (VALID_BPC, False, 1.0, "validation bits per character"),
                                         "user": (VALID_ACC, True, 100.0, "validation accuracy (%)")}  # fmt: skip
VALIDATION_LOSS: Scoring = (VALID_LOSS, False, 1.0, "validation loss")  # the user's model with its own loss
# probes that only the final analysis reads: a selection run skips them (they change no training step)
_PROBES = {"output_spread": False, "contrast_strengths": None, "grad_predictiveness": False, "scale_invariance": False,
           "record_batch_stats": False}  # fmt: skip
BUDGETED_TASKS = ("classify", "char_lm", "user")  # tasks with a ``budget`` field (the distributed exactness runs have none)


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
        validation_fraction: the share of the training examples held out for validation (the language model has
            its own validation text).
        scoring: (validation metric, higher is better, display scale, axis label); None: the task's.
    """

    task: str = "classify"
    factor: float = 3.0
    below: int = 2
    above: int = 1
    seeds: int = 2
    budget: float = 1.0
    extensions: int = 2
    validation_fraction: float = 0.2
    scoring: Scoring | None = None

    def __post_init__(self) -> None:
        if self.below + self.above + 1 < 4 or self.factor <= 1:
            raise ValueError("Selection: the grid needs at least 4 log-spaced rates (factor > 1)")

    def grid(self, centre: float) -> list[float]:
        return [_rate(centre * self.factor**k) for k in range(-self.below, self.above + 1)]

    @property
    def score(self) -> Scoring:
        return self.scoring or _SELECTION_METRIC[self.task]

    @property
    def metric(self) -> str:
        return self.score[0]

    def describe(self) -> str:
        where = (f"the last {self.validation_fraction:.0%} of the training examples, held out"
                 if self.task != "char_lm" else "the validation half of the held-out text")  # fmt: skip
        budget = "the final runs' budget" if self.budget == 1 else f"{self.budget:g} of the final runs' budget"
        return (f"Learning rates are chosen per setting: a log-spaced grid of {self.below + self.above + 1} rates "
                f"(x{self.factor:g} apart) around the study's rate, grown past an edge that holds the best rate (at "
                f"most {self.extensions} times); each rate trains {self.seeds} selection seeds (seed "
                f"{SELECTION_SEED_OFFSET} and up from --first-seed, disjoint from the final seeds) at {budget} and "
                f"is scored on {where} (never the test set); the best mean {self.metric} is chosen and the final "
                "runs train at it.")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class BudgetCheck:
    """Trained means that doubling the budget moves the setting's mean metric by less than ``tolerance`` (in the
    study's target metric's units; ``scale`` and ``unit`` only for display)."""

    tolerance: float
    seeds: int = 2
    scale: float = 100.0
    unit: str = " points of accuracy"

    def describe(self, metric: str) -> str:
        return (f"Every compared setting is also trained with twice its budget (the same schedule, stretched) on its "
                f"first {self.seeds} final seed(s); it has trained when its mean {metric} moves by less than "
                f"{self.tolerance * self.scale:g}{self.unit}. A verdict that rests on a setting that moved more reads "
                "'inconclusive: not trained'.")  # fmt: skip


def _rate(lr: float) -> float:
    return float(f"{lr:.3g}")


def setting_key(config: dict[str, Any], *without: str) -> str:
    """A setting: the configuration but for its seed (and the fields ``without``)."""
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", *without)}, sort_keys=True)


@dataclass
class Choice:
    """One tuned setting's selection: the grid so far, the mean validation score at each rate, the rate chosen."""

    label: str
    grid: list[float]
    higher_is_better: bool
    scores: dict[float, float] = field(default_factory=dict)
    extensions: int = 0
    chosen: float | None = None
    note: str = ""

    def best(self) -> tuple[int, float] | None:
        scored = [(i, lr) for i, lr in enumerate(self.grid) if math.isfinite(self.scores.get(lr, math.nan))]
        if not scored:
            return None
        sign = 1.0 if self.higher_is_better else -1.0
        return max(scored, key=lambda item: sign * self.scores[item[1]])


@dataclass
class BudgetResult:
    """The doubled-budget check of one setting: its mean metric over the same seeds at its budget and at twice."""

    label: str
    seeds: list[int]
    once: float
    twice: float
    trained: bool

    def text(self, check: BudgetCheck) -> str:
        s, u = check.scale, check.unit
        return (f"{self.label}: {self.once * s:.4g} at its budget vs {self.twice * s:.4g} at twice (seeds "
                f"{', '.join(map(str, self.seeds))}), moved {abs(self.twice - self.once) * s:.3g}{u}, tolerance "
                f"{check.tolerance * s:g}{u}")  # fmt: skip


@dataclass
class Fairness:
    """What the report shows of a study's fairness: how rates were chosen and which settings trained."""

    selection: str = ""
    check: str = ""
    choices: list[Choice] = field(default_factory=list)
    budgets: list[BudgetResult] = field(default_factory=list)
    figure: str | None = None
    score_scale: float = 1.0  # display scale of the validation scores (100: accuracy in %)
    check_scale: float = 1.0  # display scale of the doubled-budget metric


class StudyPlan:
    """One study's runs in the order fairness needs them: selection rounds, then the final runs and their doubles.

    ``configs`` are the runs as the study writes them (``Study.configs``); a tuned setting's written rate is the
    centre of its grid."""

    def __init__(self, study, options) -> None:
        self.study, self.selection, self.check = study, study.selection, study.budget_check
        self.written = [self._scaled(c, options.budget) for c in study.configs(options)]
        self.selection_seeds = [options.first_seed + SELECTION_SEED_OFFSET + i
                                for i in range(self.selection.seeds if self.selection else 0)]  # fmt: skip
        self.templates: dict[str, dict[str, Any]] = {}  # tuned setting -> its first written run
        for c in self.written:
            if self._tuned(c):
                self.templates.setdefault(self._setting(c), c)
        labels = _labels(self.written, ignored=("lr",) if self.templates else ())
        self.labels = {self._setting(c): labels[setting_key(c)] for c in self.written}  # by _setting
        higher = self.selection.score[1] if self.selection else True
        self.choices = {key: Choice(self.labels[key], self.selection.grid(c["lr"]), higher)
                        for key, c in self.templates.items()}  # fmt: skip

    def _tuned(self, config: dict[str, Any]) -> bool:
        return self.selection is not None and config["task"] == self.selection.task

    def _setting(self, config: dict[str, Any]) -> str:
        """A setting as the plan knows it: a tuned one's rate is chosen, so it does not tell settings apart."""
        return setting_key(config, "lr") if self._tuned(config) else setting_key(config)

    @staticmethod
    def _scaled(config: dict[str, Any], budget: float) -> dict[str, Any]:
        return {**config, "budget": config["budget"] * budget} if config["task"] in BUDGETED_TASKS else config

    # -- selection ------------------------------------------------------------------------------------------------
    def _selection_config(self, template: dict[str, Any], lr: float, seed: int) -> dict[str, Any]:
        c = {**template, "lr": lr, "seed": seed, "budget": template["budget"] * self.selection.budget}
        if c["task"] == "classify":
            c.update(_PROBES)
        if c["task"] != "char_lm":
            c.update(validation_fraction=self.selection.validation_fraction)
        return c

    def selection_configs(self) -> list[dict[str, Any]]:
        return [self._selection_config(self.templates[key], lr, seed)
                for key, choice in self.choices.items() for lr in choice.grid for seed in self.selection_seeds]  # fmt: skip

    def update(self, records: dict[str, RunRecord]) -> bool:
        """Score every rate from the stored selection runs (``records`` by key), choose, and grow the grids whose
        best rate is on an edge; True when a grid grew (another round is needed)."""
        grew = False
        metric = self.selection.metric
        for key, choice in self.choices.items():
            for lr in choice.grid:
                runs = [records.get(config_key(self._selection_config(self.templates[key], lr, s)))
                        for s in self.selection_seeds]  # fmt: skip
                values = [r.metrics.get(metric, math.nan) for r in runs if r is not None and r.status == "done"]
                choice.scores[lr] = float(np.mean(values)) if len(values) == len(runs) else math.nan
            best = choice.best()
            if best is None:
                choice.chosen, choice.note = self.templates[key]["lr"], "no selection run finished: the study's rate"
                continue
            index, choice.chosen = best
            edge = index in (0, len(choice.grid) - 1)
            if edge and choice.extensions < self.selection.extensions:
                f = self.selection.factor
                choice.grid = ([_rate(choice.grid[0] / f)] + choice.grid) if index == 0 else \
                    (choice.grid + [_rate(choice.grid[-1] * f)])
                choice.extensions += 1
                grew = True
            choice.note = f"best rate on the grid's edge after {choice.extensions} extensions" if edge else ""
        return grew

    # -- final runs and the doubled-budget check -------------------------------------------------------------------
    def final_configs(self) -> list[dict[str, Any]]:
        out = []
        for c in self.written:
            choice = self.choices.get(self._setting(c))
            out.append({**c, "lr": choice.chosen} if choice is not None and choice.chosen is not None else c)
        return out

    def _checked(self, config: dict[str, Any]) -> bool:
        task = self.study.target.task
        return config["task"] in BUDGETED_TASKS and (task is None or config["task"] == task)

    def check_pairs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(final run, the same run at twice the budget) for the first ``check.seeds`` seeds of each setting."""
        by_setting: dict[str, list[dict[str, Any]]] = {}
        for c in self.final_configs():
            if self._checked(c):
                by_setting.setdefault(setting_key(c), []).append(c)
        return [(c, {**c, "budget": 2 * c["budget"]})
                for runs in by_setting.values() for c in sorted(runs, key=lambda c: c["seed"])[: self.check.seeds]]  # fmt: skip

    def check_configs(self) -> list[dict[str, Any]]:
        return [twice for _, twice in self.check_pairs()]

    def judge_budgets(self, records: dict[str, RunRecord]) -> dict[str, BudgetResult]:
        """Per setting key, the doubled-budget check from the stored runs (``records`` by key)."""
        metric = self.study.target.metric
        pairs: dict[str, list[tuple[int, float, float]]] = {}
        for once, twice in self.check_pairs():
            a, b = records.get(config_key(once)), records.get(config_key(twice))
            if a is None or b is None or a.status != "done" or b.status != "done":
                continue
            if metric in a.metrics and metric in b.metrics:
                pairs.setdefault(setting_key(once), []).append((once["seed"], a.metrics[metric], b.metrics[metric]))
        results = {}
        for key, rows in pairs.items():
            m1, m2 = float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows]))
            label = self.labels.get(self._setting(json.loads(key)), key)
            results[key] = BudgetResult(label, [r[0] for r in rows], m1, m2, abs(m2 - m1) < self.check.tolerance)
        return results

    def annotate(self, records: list[RunRecord], budgets: dict[str, BudgetResult]) -> list[RunRecord]:
        """The final runs, each marked with why its setting did not train (empty when it did)."""
        out = []
        for r in records:
            result = budgets.get(setting_key(r.config))
            note = "" if result is None or result.trained else result.text(self.check)
            out.append(dataclasses.replace(r, untrained=note) if note else r)
        return out

    def roles(self) -> dict[str, list[dict[str, Any]]]:
        """Every run of the study by what it is for (the report counts what each part cost)."""
        return {"selection": self.selection_configs(), "final": self.final_configs(), "doubled": self.check_configs()}

    def fairness(self, budgets: dict[str, BudgetResult], figdir: Path) -> Fairness:
        summary = Fairness(check=self.check.describe(self.study.target.metric.replace("_", " ")),
                           choices=list(self.choices.values()), budgets=list(budgets.values()),
                           check_scale=self.check.scale)  # fmt: skip
        if self.selection is not None and self.choices:
            summary.selection = self.selection.describe()
            summary.score_scale = self.selection.score[2]
            summary.figure = _selection_figure(self.study.name, self.selection, summary.choices, figdir)
        else:
            summary.selection = self.study.untuned
        return summary


def _labels(configs: list[dict[str, Any]], ignored: tuple[str, ...] = ()) -> dict[str, str]:
    """Setting key -> a short label naming what varies between the settings of its task (a study's runs of other
    tasks, as the distributed exactness runs, do not lengthen the labels)."""
    from .study import setting_label, varying_fields

    labels = {}
    for task in dict.fromkeys(c["task"] for c in configs):
        same = [c for c in configs if c["task"] == task]
        varying = [k for k in varying_fields(same) if k not in ignored]
        labels.update({setting_key(c): setting_label(c, varying) for c in same})
    return labels


def _selection_figure(name: str, selection: Selection, choices: list[Choice], figdir: Path) -> str:
    from .study import new_figure, save

    fig, (ax,) = new_figure(width=7)
    _, _, scale, axis_label = selection.score
    for choice in choices:
        lrs = sorted(choice.scores)
        line = ax.plot(lrs, [scale * choice.scores[lr] for lr in lrs], marker="o", ms=3, label=choice.label)[0]
        if choice.chosen is not None and math.isfinite(choice.scores.get(choice.chosen, math.nan)):
            ax.plot([choice.chosen], [scale * choice.scores[choice.chosen]], marker="*", ms=12, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(axis_label)
    ax.set_title("Learning-rate selection (star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save(fig, figdir, f"{name}-selection.png")
