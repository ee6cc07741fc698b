"""Study `distributed`: one global batch over N ranks; per-rank BN vs SyncBN vs GN (the Group Norm paper's setting)."""

from __future__ import annotations

from pathlib import Path

from ..store import RunRecord
from ..study import (
    Options, Study, StudyResult, classify_config, compare, fmt, group_by, new_figure, not_applicable_notes,
    not_greater, plot_lines, save, values,
)  # fmt: skip

GLOBAL_BATCH = 8
VARIANTS = {"per-rank BN": ("batch", False), "SyncBN": ("batch", True), "GN": ("group", False)}


class Distributed(Study):
    name = "distributed"
    title = "BatchNorm across devices: per-rank, synchronized, or GroupNorm"
    claim = (
        "Split over many devices with a few examples each, per-device BN sees tiny batches and loses accuracy; "
        "SyncBN restores the global batch's statistics, and GN never needed them."
    )
    source = "Wu & He 2018 (8 GPUs, BN statistics not synced); Peng et al. 2018 (MegDet, cross-GPU BN)"
    default_norms = tuple(VARIANTS)

    def setup(self, options: Options) -> str:
        return (
            f"MNIST-1D, 3-block 1-d CNN, DistributedDataParallel over {options.nproc} gloo processes on this machine, "
            f"one global batch of {GLOBAL_BATCH} per step ({GLOBAL_BATCH // options.nproc} per rank), SGD lr 0.05 with "
            f"momentum 0.9, {self._steps(options)} steps. Reference: single-process BN on the whole global batch "
            "with the same steps, which SyncBN should match."
        )

    def _steps(self, options: Options) -> int:
        return 1500 if options.full else 300

    def configs(self, options: Options) -> list[dict]:
        runs = []
        for label in self.norms(options):
            norm, sync = VARIANTS.get(label, (label, False))
            runs += [classify_config(self.name, options, norm, seed, task="distributed", variant=label, sync=sync,
                                     nproc=options.nproc, global_batch=GLOBAL_BATCH, lr=0.05,
                                     steps=self._steps(options))  # fmt: skip
                     for seed in options.seed_list()]  # fmt: skip
        runs += [classify_config(self.name, options, "batch", seed, variant="single-process BN",
                                 batch_size=GLOBAL_BATCH, lr=0.05, steps=self._steps(options))
                 for seed in options.seed_list()]  # fmt: skip
        return runs

    def analyze(self, records: list[RunRecord], figdir: Path, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "variant")
        labels = [v for v in list(self.norms(options)) + ["single-process BN"] if (v,) in groups]
        acc = {v: [100 * a for a in values(groups[(v,)], "test_acc")] for v in labels}
        fig, (ax,) = new_figure()
        for v in labels:
            runs = [r for r in groups[(v,)] if r.curves.get("loss")]
            if runs:
                length = min(len(r.curves["loss"]) for r in runs)
                plot_lines(ax, runs[0].curves["step"][:length], {v: [r.curves["loss"][:length] for r in runs]})
        ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("training loss (rank 0's slice)")
        ax.set_title(f"{options.nproc} ranks x {GLOBAL_BATCH // options.nproc} examples")
        result.figures.append(save(fig, figdir, "distributed.png"))
        result.table_headers = ["variant", "test acc %"]
        result.table_rows = [[v, fmt(acc[v])] for v in labels]
        if "SyncBN" in acc and "per-rank BN" in acc:
            result.verdicts.append(compare("SyncBN is more accurate than per-rank BN", acc["SyncBN"],
                                           acc["per-rank BN"], "SyncBN", "per-rank BN", min_effect=0.5, unit="%"))  # fmt: skip
        if "GN" in acc and "per-rank BN" in acc:
            result.verdicts.append(compare("GN is more accurate than per-rank BN", acc["GN"], acc["per-rank BN"],
                                           "GN", "per-rank BN", min_effect=0.5, unit="%"))  # fmt: skip
        if "SyncBN" in acc and "single-process BN" in acc:
            result.verdicts.append(not_greater(
                "SyncBN trains as well as one process with the whole batch (its accuracy is not lower)",
                acc["single-process BN"], acc["SyncBN"], "single process", "SyncBN", min_effect=1.0, unit="%",
            ))  # fmt: skip
        return result


STUDY = Distributed()
