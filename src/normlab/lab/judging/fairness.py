"""Fair comparisons: every compared setting at its own learning rate, trained until more training changes nothing.

A study that compares methods declares a :class:`Selection`. Each of its settings (a configuration but for its seed
and learning rate) first trains at every rate of a log-spaced grid around the study's own rate, on seeds of its own
(disjoint from the final seeds) and with a validation split held out of the training data, screened at a quarter of
the selection budget; a grid whose best rate sits on its edge grows past that edge, and the better half of the rates
goes on from its kept stable phase to the whole selection budget (successive halving), where the best mean
validation score is chosen. The final runs
train at the chosen rate, at the study's budget T and at 2T (one trajectory,
:func:`normlab.lab.training.loop.fit_ladder`), and every verdict is judged at both and settled where more training would
not change it; the settings under a verdict that is not settled train at 4T, up to the study's :class:`Budgets`
(``StudyPlan.judge``). A setting whose final runs mostly cannot hold the chosen rate at a budget (more than half
diverged, or learned and collapsed) trains again a grid step lower, if that rate scored about as well in selection
(``StudyPlan.lower_unheld_rates``), and the report says what was done.

:class:`StudyPlan` holds one study's runs in that order; ``normlab.lab.compare`` runs its rounds.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from ..config import BudgetedConfig, RunConfig, at_doublings
from ..store import RunRecord, config_key, setting_key, trunk_key
from ..training.train import can_branch
from .fairness_figures import budget_figure, selection_figure
from .selection import (
    SELECTION_SEED_OFFSET,
    VALIDATION_LOSS,
    BudgetRow,
    Choice,
    Fairness,
    Selection,
    lost_its_training,
    round_rate,
)
from .verdicts import Budgets, Verdict, budget_name, settle

if TYPE_CHECKING:
    from .study import Options, Study, StudyResult

__all__ = [
    "Selection",
    "Budgets",
    "StudyPlan",
    "Choice",
    "BudgetRow",
    "Fairness",
    "SELECTION_SEED_OFFSET",
    "VALIDATION_LOSS",
    "trunk_key",
]

MAX_LOWERINGS = 2  # how many times a setting's rate is lowered when its final runs cannot hold it
LOWERING_TOLERANCE = 0.02  # ... to the rate below only if it scored at most this much worse in selection (relative)
# probes that only the final analysis reads: a selection run skips them (they measure a run, not what it learns:
# the same training up to float rounding, where a probe takes a packed step off its fused path; those that change
# no bit at all share their run's training: normlab.lab.training.measurements)
_PROBES = {
    "output_spread": False,
    "contrast_strengths": None,
    "grad_predictiveness": False,
    "scale_invariance": False,
    "record_batch_stats": False,
}


class StudyPlan:
    """One study's runs in the order fairness needs them: selection rounds, then the final runs and their doubles.

    ``configs`` are the runs as the study writes them (``Study.configs``); a tuned setting's written rate is the
    centre of its grid."""

    def __init__(self, study: Study, options: Options) -> None:
        self.study, self.selection, self.budgets = study, study.selection, study.budgets
        self.options = options
        self.levels: dict[str, int] = {}  # trunk_key -> the largest doubling its final runs train at (default 1)
        self.written = [self._scaled(c, options.budget) for c in study.configs(options)]
        self.selection_seeds = [
            options.first_seed + SELECTION_SEED_OFFSET + i for i in range(self.selection.seeds if self.selection else 0)
        ]
        self.templates: dict[str, RunConfig] = {}  # tuned setting -> its first written run
        for c in self.written:
            if self._tuned(c):
                self.templates.setdefault(self._setting(c), c)
        labels = _labels(self.written, ignored=("lr",) if self.templates else ())
        self.labels = {self._setting(c): labels[setting_key(c)] for c in self.written}  # by _setting
        higher = self.selection.score[1] if self.selection else True
        self.choices = {
            key: Choice(self.labels[key], self.selection.grid(c.lr), higher) for key, c in self.templates.items()
        }
        screenable = self.templates and all(can_branch(c) for c in self.templates.values())
        self.halving = self.selection.halving if self.selection is not None and screenable else 0

    def _tuned(self, config: RunConfig) -> bool:
        """A run whose rate is chosen: the study's task, except a measurement at a fixed recipe (a batch-statistics
        recorder), whose rate is part of what it measures."""
        if getattr(config, "record_batch_stats", False):
            return False
        return self.selection is not None and config.task == self.selection.task

    def _setting(self, config: RunConfig) -> str:
        """A setting as the plan knows it: a tuned one's rate is chosen, so it does not tell settings apart."""
        return setting_key(config, "lr") if self._tuned(config) else setting_key(config)

    @staticmethod
    def _scaled(config: RunConfig, budget: float) -> RunConfig:
        if isinstance(config, BudgetedConfig):
            return dataclasses.replace(config, budget=config.budget * budget)
        return config

    # -- selection ------------------------------------------------------------------------------------------------
    def _selection_config(self, template: RunConfig, lr: float, seed: int, chosen: bool = True) -> RunConfig:
        """A selection run of ``template`` at rate ``lr``: at the whole selection budget (``chosen``), or at the
        screening one, 1/2**halving of it (the same run's budgets: one "wsd" trajectory, so the whole one goes on
        from the screening's stable phase)."""
        assert self.selection is not None and isinstance(template, BudgetedConfig)
        budget = template.budget * self.selection.budget / 2**self.halving
        fields: dict[str, Any] = {"lr": lr, "seed": seed, "budget": budget, "doublings": self.halving if chosen else 0}
        if template.task == "classify":
            fields.update(_PROBES)
        if template.task == "char_lm":  # the language model has its own validation text
            fields.update(validation_only=True)
        else:
            fields.update(validation_fraction=self.selection.validation_fraction)
        return dataclasses.replace(template, **fields)

    def selection_configs(self) -> list[RunConfig]:
        """Every selection run asked for so far: each grid rate at the screening budget, and the survivors (every
        rate without halving) at the whole selection budget."""
        out = []
        for key, choice in self.choices.items():  # without halving, a screening run is the whole run
            template = self.templates[key]
            out += [self._selection_config(template, lr, s, False) for lr in choice.grid for s in self.selection_seeds]
            if self.halving:
                out += [
                    self._selection_config(template, lr, s) for lr in choice.survivors for s in self.selection_seeds
                ]
        return out

    def _scores(self, records: dict[str, RunRecord], key: str, rates: list[float], chosen: bool) -> dict[float, float]:
        """Each rate's mean validation score over its selection seeds (NaN unless every seed's run is done)."""
        scores = {}
        for lr in rates:
            runs = [
                records.get(config_key(self._selection_config(self.templates[key], lr, s, chosen)))
                for s in self.selection_seeds
            ]
            values = [
                r.metrics.get(self.selection.metric, math.nan) for r in runs if r is not None and r.status == "done"
            ]
            scores[lr] = float(np.mean(values)) if len(values) == len(runs) else math.nan
        return scores

    def update(self, records: dict[str, RunRecord]) -> bool:
        """Score the stored selection runs (``records`` by key) and choose each setting's rate; True when another
        round of runs is needed: a grid whose best (screened) rate sits on an edge grew, or the survivors of a
        screening go on to the whole selection budget."""
        more = False
        for key, choice in self.choices.items():
            screened = self._scores(records, key, choice.grid, chosen=False)
            best = choice.best(screened)
            if best is None:
                choice.chosen, choice.note = self.templates[key].lr, "no selection run finished: the study's rate"
                continue
            index, _ = best
            edge = index in (0, len(choice.grid) - 1)
            if edge and choice.extensions < self.selection.extensions:
                f = self.selection.factor
                choice.grid = (
                    ([round_rate(choice.grid[0] / f)] + choice.grid)
                    if index == 0
                    else (choice.grid + [round_rate(choice.grid[-1] * f)])
                )
                choice.extensions += 1
                more = True
                continue
            if self.halving:
                choice.screening = screened
                survivors = choice.ranked(screened)[: self.selection.survivors(len(choice.grid))]
                if survivors != choice.survivors:  # asked for once: a run that fails is not asked for again
                    choice.survivors, more = survivors, True
                    continue
                choice.scores = self._scores(records, key, survivors, chosen=True)
            else:
                choice.scores = screened
            index, choice.chosen = choice.best() or best  # no survivor finished: the best screened rate
            edge = index in (0, len(choice.grid) - 1)
            choice.note = f"chosen rate on the grid's edge after {choice.extensions} extensions" if edge else ""
        return more

    # -- final runs and the doubled-budget check -------------------------------------------------------------------
    def final_configs(self) -> list[RunConfig]:
        out = []
        for c in self.written:
            choice = self.choices.get(self._setting(c))
            chosen = None if choice is None else choice.chosen
            out.append(c if chosen is None else dataclasses.replace(c, lr=chosen))
        return out

    @staticmethod
    def _budgeted(config: RunConfig) -> TypeGuard[BudgetedConfig]:
        return isinstance(config, BudgetedConfig)

    def budget_configs(self) -> list[RunConfig]:
        """The final runs at every budget they train at: T and 2T (doublings 0 and 1), more where a verdict needs
        it; runs with no budget (the exactness runs) once."""
        out: list[RunConfig] = []
        for c in self.final_configs():
            if self._budgeted(c):
                out += [at_doublings(c, d) for d in range(self.levels.get(trunk_key(c), 1) + 1)]
            else:
                out.append(c)
        return out

    def records_at(self, records: dict[str, RunRecord], doublings: int) -> tuple[list[RunRecord], set[str]]:
        """The final runs at budget T·2^``doublings``: each setting's runs at that budget, or at its largest below
        (so the analysis sees every setting), and the settings (trunk keys) truly at it. Only the budgets this plan
        asked for count (a store may hold more, from a run that settled further: a rerun asks for them again)."""
        out: list[RunRecord] = []
        actual: set[str] = set()
        for c in self.final_configs():
            if not self._budgeted(c):
                if (r := records.get(config_key(c))) is not None:
                    out.append(r)
                    actual.add(trunk_key(c))
                continue
            for d in range(min(doublings, self.levels.get(trunk_key(c), 1)), -1, -1):  # what this plan asked for
                if (r := records.get(config_key(at_doublings(c, d)))) is not None:
                    out.append(r)
                    if d == doublings:
                        actual.add(trunk_key(c))
                    break
        return out, actual

    def judge(self, records: dict[str, RunRecord], figdir: Path | None) -> tuple[StudyResult, bool]:
        """The study's analysis at its budget T (figures into ``figdir``) with its training check (the target, at 2T)
        and its verdicts settled over the budgets stored (:func:`~normlab.lab.judging.verdicts.settle`; withheld when
        the target is missed); and whether a verdict needs a larger budget (its settings' levels are raised, so
        :meth:`budget_configs` lists their runs there). A study that misses its target trains no further: more
        budget is for verdicts, not for models that have not learned the task."""
        from .study import StudyResult, check_training, withheld

        lost = self.lost_runs(records)  # read once: the rates it lowers, and the notes
        if self.lower_unheld_rates(lost):
            return StudyResult(), True  # judged once the lowered rates' final runs are stored
        everything = {trunk_key(c) for c in self.final_configs() if self._budgeted(c)}
        by_claim: dict[str, dict[int, Verdict]] = {}
        main: StudyResult | None = None
        for d in range(self.budgets.max_doublings + 1):
            recs, actual = self.records_at(records, d)
            if d > 0 and not actual & everything:
                break
            result = self.study.analyze(recs, figdir if d == 0 else None, self.options)
            main = main or result
            for v in result.verdicts:
                # a claim rests on the settings it compared at T: a longer budget that left it no comparison
                # (its runs diverged there) still counts as measured, so the claim cannot settle before it
                at_t = by_claim.get(v.claim, {}).get(0)
                if d == 0 or set((at_t.settings if at_t else ()) or v.settings or everything) <= actual:
                    by_claim.setdefault(v.claim, {})[d] = v
        assert main is not None  # budget T (d = 0) is always analyzed
        main.notes += self.lost_notes(lost)
        training = check_training(self.study.target, self.records_at(records, 1)[0], tuned=self.selection is not None)
        training.budget = "2T"
        main.training = training
        settled, grew = [], False
        for by_budget in by_claim.values():
            verdict, more = settle(by_budget, self.budgets.max_doublings)
            for key in (by_budget[min(by_budget)].settings or everything) if more and training.met else ():
                if key in everything and self.levels.get(key, 1) <= max(by_budget):
                    self.levels[key], grew = max(by_budget) + 1, True
            settled.append(verdict)
        main.verdicts = withheld(settled, training)
        if main.recommend is not None:  # what to use follows the settled verdicts, not those at budget T
            main.recommendations = main.recommend({v.claim: v for v in main.verdicts})
        return main, grew

    def lost_runs(self, records: dict[str, RunRecord]) -> dict[str, dict[int, list[bool]]]:
        """Setting -> budget (doublings) -> whether each of its final runs stored there lost its training (diverged,
        or learned and collapsed: :func:`~normlab.lab.judging.selection.lost_its_training`)."""
        lost: dict[str, dict[int, list[bool]]] = {}
        for c in self.final_configs():
            for d in range(self.levels.get(trunk_key(c), 1) + 1) if self._budgeted(c) else ():
                if (r := records.get(config_key(at_doublings(c, d)))) is not None:
                    flag = lost_its_training(r.metrics, r.curves.get("loss", []))
                    lost.setdefault(self._setting(c), {}).setdefault(d, []).append(flag)
        return lost

    def lower_unheld_rates(self, lost: dict[str, dict[int, list[bool]]]) -> bool:
        """Lower the rate of every tuned setting that most of its final runs at some budget could not hold (they
        diverged, or learned and collapsed) to the grid's next rate below, at most :data:`MAX_LOWERINGS` times, and
        say so in its choice's note; True when a rate was lowered (its final runs train again). Selection scores a
        rate at a shorter budget than the verdicts judge: a rate that most seeds cannot hold that long is not the
        method's rate there, as a practitioner whose runs diverge lowers it, provided the rate below scored within
        :data:`LOWERING_TOLERANCE` of it in selection; otherwise the rate stays and the note says why. A minority that
        diverges stays a result (scored at chance): a lower rate can train far worse (Batch Renorm at batch 1, 0.06
        -> 0.02: 60 -> 23%)."""
        lowered = False
        for key, by_budget in lost.items():
            choice = self.choices.get(key)
            unheld = {d: flags for d, flags in by_budget.items() if 2 * sum(flags) > len(flags)}
            if not unheld or choice is None or choice.chosen is None or len(choice.lowered) >= MAX_LOWERINGS:
                continue
            counts = ", ".join(
                f"{sum(f)} of {len(f)} at {budget_name(d)}" for d, f in sorted(by_budget.items()) if any(f)
            )
            what = f"{choice.chosen:g} diverged or collapsed in {counts}"
            below = max((lr for lr in choice.grid if lr < choice.chosen), default=None)
            worse = None if below is None else choice.shortfall(choice.chosen, below)
            if worse is None or worse > LOWERING_TOLERANCE:  # None: no rate below, or none scored
                why = (
                    "no rate below it was scored"
                    if worse is None
                    else f"the rate below ({below:g}) scored {worse:.0%} worse in selection: worse at any budget"
                )
                choice.note = "; ".join([*choice.lowered, what]) + f"; kept, as {why}"
                continue
            choice.lowered.append(what)
            choice.unheld.append(choice.chosen)
            choice.chosen, lowered = below, True
            choice.note = "; ".join(choice.lowered) + f": the final runs train at {below:g}, the next rate below"
        return lowered

    def lost_notes(self, lost: dict[str, dict[int, list[bool]]]) -> list[str]:
        """One note per budget and setting whose final runs there lost their training (diverged, or learned and
        collapsed): the verdicts at that budget compare what is left, or nothing."""
        return [
            f"At {budget_name(d)}, {sum(flags)} of {len(flags)} final runs of {self.labels.get(key) or 'the study'} "
            "diverged or collapsed (the loss blew up, or came back to its first value after falling below half of it)"
            for key, by_budget in lost.items()
            for d, flags in sorted(by_budget.items())
            if any(flags)
        ]

    def budget_rows(self, records: dict[str, RunRecord]) -> list[BudgetRow]:
        """Each compared setting's mean target metric at every budget it trained at."""
        metric = self.study.target.metric
        values: dict[str, dict[int, list[float]]] = {}  # setting -> doublings -> the seeds' values
        for c in self.final_configs():
            if not self._budgeted(c) or (self.study.target.task and c.task != self.study.target.task):
                continue
            by_budget = values.setdefault(self._setting(c), {})
            for d in range(self.levels.get(trunk_key(c), 1) + 1):
                r = records.get(config_key(at_doublings(c, d)))
                if r is not None and r.status == "done" and metric in r.metrics:
                    by_budget.setdefault(d, []).append(r.metrics[metric])
        return [
            BudgetRow(self.labels.get(key, ""), {d: float(np.mean(v)) for d, v in sorted(by_budget.items())})
            for key, by_budget in values.items()
        ]

    def roles(self) -> dict[str, list[RunConfig]]:
        """Every run of the study by what it is for (the report counts what each part cost)."""
        longer: list[RunConfig] = [c for c in self.budget_configs() if self._budgeted(c) and c.doublings > 0]
        unheld: list[RunConfig] = []  # the final runs at rates they could not hold, at every budget they trained at
        for c in self.final_configs():
            choice = self.choices.get(self._setting(c)) if self._budgeted(c) and self._tuned(c) else None
            for old in [dataclasses.replace(c, lr=lr) for lr in (choice.unheld if choice else [])]:
                unheld += [at_doublings(old, d) for d in range(self.levels.get(trunk_key(old), 1) + 1)]
        return {
            "selection": self.selection_configs(),
            "final": self.final_configs(),
            "longer budgets": longer,
            "unheld rates": unheld,
        }

    def fairness(self, records: dict[str, RunRecord], figdir: Path) -> Fairness:
        rows = self.budget_rows(records)
        summary = Fairness(
            check=self.budgets.describe(self.study.target.metric.replace("_", " ")),
            choices=list(self.choices.values()),
            budgets=rows,
            check_scale=self.budgets.scale,
            budget_figure=budget_figure(self.study.name, self.study.target.metric, self.budgets, rows, figdir),
        )
        if self.selection is not None and self.choices:
            summary.selection = self.selection.describe(self.halving)
            summary.score_scale = self.selection.score[2]
            summary.figure = selection_figure(self.study.name, self.selection, summary.choices, figdir)
        else:
            summary.selection = self.study.untuned
        return summary


def _labels(configs: list[RunConfig], ignored: tuple[str, ...] = ()) -> dict[str, str]:
    """Setting key -> a short label naming what varies between the settings of its task (a study's runs of other
    tasks, as the distributed exactness runs, do not lengthen the labels)."""
    from .study import setting_label, varying_fields

    labels = {}
    for task in dict.fromkeys(c.task for c in configs):
        same = [c for c in configs if c.task == task]
        varying = [k for k in varying_fields(same) if k not in ignored]
        labels.update({setting_key(c): setting_label(c, varying) for c in same})
    return labels
