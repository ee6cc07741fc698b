"""Study `contrast`: InstanceNorm discards each example's contrast (Ulyanov et al. 2016)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import RunConfig
from ..judging.fairness import Selection
from ..judging.study import (
    Options,
    Study,
    StudyResult,
    Target,
    classify_config,
    compare,
    fmt,
    group_by,
    new_figure,
    not_applicable_notes,
    plot_lines,
    sample,
    save,
)
from ..metrics import DIVERGED, TEST_ACC
from ..store import RunRecord

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
LEARNED = 0.2  # accuracy on unchanged images that a run which learned the digits exceeds (chance: 0.1)


class Contrast(Study):
    name = "contrast"
    title = "InstanceNorm discards contrast"
    claim = (
        "IN normalizes each example's channels by their own statistics, so a per-example change of contrast or "
        "brightness barely changes its predictions; BN's fixed running statistics do not adapt."
    )
    source = "Ulyanov et al. 2016 (Instance Normalization); Huang & Belongie 2017 (AdaIN)"
    default_norms = ("batch", "instance", "group", "layer", "none")
    target = Target(TEST_ACC, 0.97)
    selection = Selection()

    def setup(self, options: Options) -> str:
        return (
            "scikit-learn's 8x8 digits, a 3-block 2-d CNN, SGD with momentum 0.9 and a warmup-stable-decay schedule "
            "(peak rate chosen per norm, "
            "grid around 0.05), batch 32, "
            f"{self._epochs(options)} epochs on unchanged images. At test every image gets its own contrast a and "
            "brightness b, x -> a·x + b, with log a ~ U(-s ln 5, s ln 5) and b ~ U(-2s, 2s) (standardized units) "
            f"for strengths s in {STRENGTHS}."
        )

    def _epochs(self, options: Options) -> int:
        return 40 if options.full else 20

    def configs(self, options: Options) -> list[RunConfig]:
        return [
            classify_config(
                self.name,
                options,
                norm,
                seed,
                data="digits",
                batch_size=32,
                lr=0.05,
                epochs=self._epochs(options),
                contrast_strengths=STRENGTHS,
                lr_schedule="wsd",
            )
            for norm in self.norms(options)
            for seed in options.seed_list()
        ]

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "norm")
        norms = [n for n in self.norms(options) if (n,) in groups]
        curves = {n: [[100 * a for a in _contrast(r)] for r in groups[(n,)]] for n in norms}
        fig, (ax,) = new_figure()
        for n in norms:
            plot_lines(ax, STRENGTHS, {n: curves[n]})
        ax.set_xlabel("contrast/brightness change strength s"), ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy under per-example contrast changes")
        result.figures.append(save(fig, figdir, "contrast.png"))
        result.table_headers = ["norm"] + [f"s={s:g}" for s in STRENGTHS]
        result.table_rows = [[n] + [fmt([c[i] for c in curves[n]]) for i in range(len(STRENGTHS))] for n in norms]
        # a run that diverged or collapsed to chance (an unnormalized net at its chosen rate can, when trained on)
        # has no accuracy to lose: counting its drop as 0 would read "robust to contrast" from a net that learned
        # nothing, so it leaves the comparison (its seed unpaired), and the report says so
        trained = {n: [r for r in groups[(n,)] if _learned(r)] for n in norms}
        for n in norms:
            if len(trained[n]) < len(groups[(n,)]):
                result.notes.append(
                    f"{n}: {len(groups[(n,)]) - len(trained[n])} of {len(groups[(n,)])} runs diverged or collapsed to "
                    f"chance (accuracy on unchanged images under {LEARNED:.0%}); the drop is compared over the others"
                )
        drop = {n: sample(trained[n], lambda r: 100 * (_contrast(r)[0] - _contrast(r)[-1])) for n in norms}
        if "instance" in norms:
            for other in (n for n in norms if n != "instance"):
                verdict = compare(
                    f"{other} loses more accuracy than IN at strength {STRENGTHS[-1]:g}",
                    drop[other],
                    drop["instance"],
                    f"{other} drop",
                    "IN drop",
                    min_effect=1.0,
                    unit=" pts",
                )
                if not (trained[other] and trained["instance"]):
                    empty = other if not trained[other] else "instance"
                    verdict = replace(verdict, evidence=f"every {empty} run diverged or collapsed to chance")
                result.verdicts.append(verdict)
        return result


def _learned(record: RunRecord) -> bool:
    """Whether a run learned the task: not diverged, and above LEARNED on unchanged images."""
    return not record.metrics.get(DIVERGED) and _contrast(record)[0] >= LEARNED


def _contrast(record: RunRecord) -> list[float]:
    """A run's accuracy at each strength; a diverged run is scored at chance at every one (its test accuracy)."""
    return record.curves.get("contrast_acc") or [record.metrics[TEST_ACC]] * len(STRENGTHS)


STUDY = Contrast()
