"""Study `learning-rate`: BatchNorm tolerates much larger learning rates (Ioffe & Szegedy; Santurkar et al.)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import RunConfig
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
    save,
    seed_rows,
    values,
)
from ..metrics import DIVERGED, TEST_ACC
from ..store import RunRecord

PROBE_LR = 0.3


class LearningRate(Study):
    name = "learning-rate"
    title = "BatchNorm and large learning rates"
    claim = "BN tolerates much larger learning rates; its loss landscape is smoother (more predictive gradients)."
    source = "Ioffe & Szegedy 2015; Santurkar et al. 2018 (How Does Batch Normalization Help Optimization?)"
    default_norms = ("batch", "layer", "group", "none")
    target = Target(TEST_ACC, 0.90)
    untuned = "Not chosen: the learning rate is the variable under test, and every norm runs the whole grid."

    def lrs(self, options: Options) -> list[float]:
        return [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0] if options.full else [0.003, 0.03, PROBE_LR, 3.0]

    def setup(self, options: Options) -> str:
        return (
            f"MNIST-1D, 3-block 1-d CNN, SGD with momentum 0.9, batch 64, {self._epochs(options)} epochs, peak "
            "learning rate (held, then a 1-sqrt decay to 0 over the last 20% of the steps) from a log-spaced sweep "
            f"{self.lrs(options)}. A run diverges when its loss is non-finite or "
            "10x its first value (scored at chance). Gradient predictiveness at lr "
            f"{PROBE_LR}: ||g(w) - g(w - lr g(w))|| / ||g(w)|| on the same batch, along training."
        )

    def _epochs(self, options: Options) -> int:
        return 16 if options.full else 8

    def configs(self, options: Options) -> list[RunConfig]:
        return [
            classify_config(
                self.name,
                options,
                norm,
                seed,
                batch_size=64,
                lr=lr,
                epochs=self._epochs(options),
                lr_schedule="wsd",
                grad_predictiveness=(lr == PROBE_LR),
                points=20,
            )
            for norm in self.norms(options)
            for lr in self.lrs(options)
            for seed in options.seed_list()
        ]

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "norm", "lr")
        lrs = self.lrs(options)
        norms = [n for n in self.norms(options) if any((n, lr) in groups for lr in lrs)]
        acc = {(n, lr): values(groups.get((n, lr), []), TEST_ACC, 100) for n in norms for lr in lrs}

        fig, (ax1, ax2) = new_figure(2)
        for n in norms:
            plot_lines(ax1, lrs, {n: seed_rows([acc[(n, lr)] for lr in lrs])})
            probes = [r.curves["grad_pred"] for r in groups.get((n, PROBE_LR), []) if r.curves.get("grad_pred")]
            if probes:
                length = min(len(p) for p in probes)
                plot_lines(ax2, list(range(length)), {n: [p[:length] for p in probes]})
        ax1.set_xscale("log")
        ax1.set_xlabel("learning rate")
        ax1.set_ylabel("test accuracy (%)")
        ax1.set_title("Accuracy vs learning rate")
        ax2.set_yscale("log")
        ax2.set_xlabel("training progress (probe index)")
        ax2.set_ylabel("gradient change along the step")
        ax2.set_title(f"Gradient predictiveness, lr {PROBE_LR}")
        result.figures.append(save(fig, figdir, "learning-rate.png"))

        diverged = {(n, lr): values(groups.get((n, lr), []), DIVERGED) for n in norms for lr in lrs}
        result.table_headers = ["norm"] + [f"lr={lr:g}" for lr in lrs]
        result.table_rows = [
            [n] + [fmt(acc[(n, lr)]) + (" (diverged)" if any(diverged[(n, lr)]) else "") for lr in lrs] for n in norms
        ]
        if "batch" in norms:
            for other in (n for n in norms if n != "batch"):
                result.verdicts.append(
                    compare(
                        f"BN is more accurate than {other} at the largest learning rate ({lrs[-1]:g})",
                        acc[("batch", lrs[-1])],
                        acc[(other, lrs[-1])],
                        "BN",
                        other,
                        min_effect=1.0,
                        unit="%",
                    )
                )
            best = {n: self._best_lr_per_seed(acc, n, lrs) for n in norms}
            if "none" in norms:
                result.verdicts.append(
                    compare(
                        "BN's best learning rate is larger than the unnormalized net's (log10 lr)",
                        best["batch"],
                        best["none"],
                        "BN",
                        "none",
                        min_effect=0.1,
                    )
                )
                pred = {
                    n: [
                        float(np.mean(r.curves["grad_pred"]))
                        for r in groups.get((n, PROBE_LR), [])
                        if r.curves.get("grad_pred")
                    ]
                    for n in ("batch", "none")
                }
                result.verdicts.append(
                    compare(
                        "BN's gradients change less along a step than without normalization (Santurkar et al.)",
                        pred["none"],
                        pred["batch"],
                        "none",
                        "BN",
                        min_effect=0.0,
                    )
                )
        return result

    @staticmethod
    def _best_lr_per_seed(acc: dict, norm: str, lrs: list[float]) -> list[float]:
        seeds = min(len(acc[(norm, lr)]) for lr in lrs)
        return [math.log10(max(lrs, key=lambda lr: acc[(norm, lr)][i])) for i in range(seeds)]


STUDY = LearningRate()
