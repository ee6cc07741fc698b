"""Study `weight-decay`: with BN after a layer, weight decay only controls that layer's scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..judging.study import (
    Options,
    Study,
    StudyResult,
    Target,
    check,
    classify_config,
    compare,
    fmt,
    group_by,
    new_figure,
    plot_lines,
    sample,
    save,
    values,
)
from ..metrics import FINAL_WEIGHT_NORM, SCALE_INVARIANCE_ERROR, TEST_ACC
from ..store import RunRecord

DECAYS = (0.0, 1e-3, 1e-2)
INVARIANCE_TOLERANCE = 1e-4


class WeightDecay(Study):
    name = "weight-decay"
    title = "Weight decay before BatchNorm"
    claim = (
        "A layer followed by BN is scale invariant, L(αw) = L(w); weight decay then only controls ‖w‖ and through "
        "it the effective learning rate lr/‖w‖²."
    )
    source = "van Laarhoven 2017 (L2 Regularization versus Batch and Weight Normalization); Zhang et al. 2018"
    default_norms = ("batch",)
    target = Target(TEST_ACC, 0.90)
    untuned = (
        "Not chosen: the study measures how weight decay moves the effective learning rate lr/‖w‖² at one "
        "peak rate; it compares weight decays of one norm (and a scale-invariance control), not methods."
    )

    def setup(self, options: Options) -> str:
        return (
            "MNIST-1D, 3-block 1-d CNN with the given norm after every conv, SGD lr 0.1 (held, then a 1-sqrt decay "
            "over the last 20% of the steps), momentum 0.9, "
            "batch 64, "
            f"{self._epochs(options)} epochs, weight decay {list(DECAYS)}. The watched layer is the second conv. Scale "
            "invariance: the network's training-mode output with that conv's weight multiplied by 3, against the "
            "original (an unnormalized net is run as the control the check must fail on)."
        )

    def _epochs(self, options: Options) -> int:
        return 16 if options.full else 8

    def configs(self, options: Options) -> list[RunConfig]:
        common: dict[str, Any] = dict(
            batch_size=64, lr=0.1, epochs=self._epochs(options), scale_invariance=True, lr_schedule="wsd"
        )
        runs = [
            classify_config(self.name, options, norm, seed, weight_decay=wd, **common)
            for norm in self.norms(options)
            for wd in DECAYS
            for seed in options.seed_list()
        ]
        runs += [
            classify_config(self.name, options, "none", seed, weight_decay=0.0, **common)
            for seed in options.seed_list()
        ]
        return runs

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult()
        groups = group_by(records, "norm", "weight_decay")
        norms = [n for n in self.norms(options) if any((n, wd) in groups for wd in DECAYS)]
        fig, (ax1, ax2) = new_figure(2)
        for n in norms:
            for wd in DECAYS:
                runs = groups.get((n, wd), [])
                if runs:
                    steps = runs[0].curves["step"]
                    length = min(len(r.curves["weight_norm"]) for r in runs)
                    plot_lines(ax1, steps, {f"{n}, wd={wd:g}": [r.curves["weight_norm"][:length] for r in runs]})
                    plot_lines(ax2, steps, {f"{n}, wd={wd:g}": [r.curves["effective_lr"][:length] for r in runs]})
        ax1.set_xlabel("step"), ax1.set_ylabel("‖w‖ of the watched conv"), ax1.set_title("Weight norm")
        ax2.set_xlabel("step"), ax2.set_ylabel("lr / ‖w‖²"), ax2.set_title("Effective learning rate")
        ax2.set_yscale("log")
        result.figures.append(save(fig, figdir, "weight-decay.png"))

        result.table_headers = [
            "norm",
            "weight decay",
            "test acc %",
            "final ‖w‖",
            "final lr/‖w‖²",
            "scale-invariance error",
        ]
        for (n, wd), runs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "none", kv[0])):
            result.table_rows.append(
                [
                    n,
                    f"{wd:g}",
                    fmt(values(runs, TEST_ACC), 100),
                    fmt(values(runs, FINAL_WEIGHT_NORM), digits=2),
                    fmt([r.curves["effective_lr"][-1] for r in runs], digits=4),
                    f"{max(values(runs, 'scale_invariance_error')):.1e}",
                ]
            )
        for n in norms:
            errors = [e for wd in DECAYS for e in values(groups.get((n, wd), []), SCALE_INVARIANCE_ERROR)]
            control = values(groups.get(("none", 0.0), []), SCALE_INVARIANCE_ERROR)
            if errors:
                worst = max(errors)
                evidence = f"max relative output change {worst:.1e} (tolerance {INVARIANCE_TOLERANCE:g})"
                if control:
                    evidence += f"; unnormalized control: {max(control):.2g}"
                result.verdicts.append(
                    check(f"the net with {n} is invariant to the conv's scale", worst < INVARIANCE_TOLERANCE, evidence)
                )
            no_wd, big_wd = groups.get((n, 0.0), []), groups.get((n, DECAYS[-1]), [])
            initial = sample(no_wd, lambda r: r.curves["weight_norm"][0])
            result.verdicts.append(
                compare(
                    f"without weight decay ‖w‖ grows ({n})",
                    values(no_wd, FINAL_WEIGHT_NORM),
                    initial,
                    "final",
                    "initial",
                    min_effect=0.01,
                )
            )
            result.verdicts.append(
                compare(
                    f"weight decay {DECAYS[-1]:g} keeps ‖w‖ smaller ({n})",
                    values(no_wd, FINAL_WEIGHT_NORM),
                    values(big_wd, FINAL_WEIGHT_NORM),
                    "wd=0",
                    f"wd={DECAYS[-1]:g}",
                    min_effect=0.01,
                )
            )
            result.verdicts.append(
                compare(
                    f"so the effective learning rate lr/‖w‖² (peak lr, final ‖w‖) stays larger with weight decay ({n})",
                    sample(big_wd, _effective_lr),
                    sample(no_wd, _effective_lr),
                    f"wd={DECAYS[-1]:g}",
                    "wd=0",
                )
            )
        return result


def _effective_lr(record: RunRecord) -> float:
    return record.config["lr"] / record.metrics[FINAL_WEIGHT_NORM] ** 2


STUDY = WeightDecay()
