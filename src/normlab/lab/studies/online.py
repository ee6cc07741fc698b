"""Study `online`: BatchNorm is not fit for online learning (batch size 1, non-i.i.d. streams)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

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
    save,
    values,
)
from ..metrics import TEST_ACC, TEST_ACC_BATCH_STATS
from ..store import RunRecord

STREAMS = ("iid", "sorted")
LR = 0.02


class Online(Study):
    name = "online"
    title = "BatchNorm and online learning"
    claim = (
        "BN is not fit for online learning: at batch size 1 on a non-i.i.d. stream it falls behind LN and GN "
        "(Batch Renorm was designed to close part of that gap)."
    )
    source = "Ba et al. 2016 (Layer Normalization); Ioffe 2017 (Batch Renormalization, non-i.i.d. minibatches)"
    default_norms = ("batch", "batchrenorm", "layer", "group")
    target = Target(TEST_ACC, 0.60)
    selection = Selection()

    def setup(self, options: Options) -> str:
        return (
            "MNIST-1D streamed one example per step (batch size 1), plain SGD with a warmup-stable-decay schedule "
            "(peak rate chosen per norm and stream, "
            f"grid around {LR}), "
            f"{self._epochs(options)} passes over {self._subset(options)} examples, 3-block 1-d CNN. Two streams: "
            "i.i.d. "
            "order, and class-sorted chunks (10 examples of one class, then 10 of the next, cycling). Test accuracy "
            "with BN's "
            "running statistics and, for comparison, with each test batch of 50 normalized by its own statistics."
        )

    def _epochs(self, options: Options) -> int:
        return 6 if options.full else 3

    def _subset(self, options: Options) -> int:
        return 4000

    def configs(self, options: Options) -> list[RunConfig]:
        return [
            classify_config(
                self.name,
                options,
                norm,
                seed,
                batch_size=1,
                lr=LR,
                momentum=0.0,
                epochs=self._epochs(options),
                stream=stream,
                chunk=10,
                lr_schedule="wsd",
                train_subset=self._subset(options),
            )
            for norm in self.norms(options)
            for stream in STREAMS
            for seed in options.seed_list()
        ]

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "norm", "stream")
        norms = [n for n in self.norms(options) if any((n, s) in groups for s in STREAMS)]
        acc = {(n, s): values(groups.get((n, s), []), TEST_ACC, 100) for n in norms for s in STREAMS}
        acc_bs = {(n, s): values(groups.get((n, s), []), TEST_ACC_BATCH_STATS, 100) for n in norms for s in STREAMS}

        fig, (ax,) = new_figure(width=6)
        x = np.arange(len(norms))
        for i, s in enumerate(STREAMS):
            means = [float(np.mean(acc[(n, s)])) if acc[(n, s)] else math.nan for n in norms]
            errs = [np.std(acc[(n, s)], ddof=1) if len(acc[(n, s)]) > 1 else 0 for n in norms]
            ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=errs, label=f"{s} stream, running stats")
        for i, s in enumerate(STREAMS):
            means = [float(np.mean(acc_bs[(n, s)])) if acc_bs[(n, s)] else math.nan for n in norms]
            ax.scatter(
                x + (i - 0.5) * 0.38,
                means,
                marker="_",
                s=300,
                color="k",
                zorder=3,
                label="test batches' own statistics" if i == 0 else None,
            )
        ax.set_xticks(x, norms)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Online learning, batch size 1")
        ax.legend(fontsize=7)
        result.figures.append(save(fig, figdir, "online.png"))

        result.table_headers = ["norm", "stream", "test acc % (running stats)", "test acc % (batch stats)"]
        result.table_rows = [[n, s, fmt(acc[(n, s)]), fmt(acc_bs[(n, s)])] for n in norms for s in STREAMS]
        if "batch" in norms:
            for other in (n for n in norms if n != "batch"):
                for s in STREAMS:
                    result.verdicts.append(
                        compare(
                            f"{other} beats BN at batch size 1 on the {s} stream",
                            acc[(other, s)],
                            acc[("batch", s)],
                            other,
                            "BN",
                            min_effect=1.0,
                            unit="%",
                        )
                    )
            gap = compare(
                "BN's running statistics do worse at test than batch statistics (train/test discrepancy)",
                acc_bs[("batch", "sorted")],
                acc[("batch", "sorted")],
                "batch stats",
                "running stats",
                min_effect=1.0,
                unit="%",
            )
            result.verdicts.append(gap)
        return result


STUDY = Online()
