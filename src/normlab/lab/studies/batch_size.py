"""Study `batch-size`: BN's error grows as the batch shrinks; GN, LN, IN stay flat (Group Norm paper)."""

from __future__ import annotations

from pathlib import Path

from ...reference.layout import batch_layout
from ..store import RunRecord
from ..study import (
    Options, Study, StudyResult, classify_config, compare, fmt, group_by, new_figure, not_applicable_notes,
    not_greater, plot_lines, save, seed_rows, values,
)  # fmt: skip

DEPTH, WIDTH = 4, 32


class BatchSize(Study):
    name = "batch-size"
    title = "Small batches hurt BatchNorm, not GroupNorm"
    claim = "BN's error grows as the batch shrinks; GN, LN and IN stay flat."
    source = "Wu & He 2018, Group Normalization, Fig. 1 and Table 2"
    default_norms = ("batch", "group", "layer", "instance")

    def batch_sizes(self, options: Options) -> list[int]:
        return [2, 4, 8, 16, 32, 64] if options.full else [2, 8, 32]

    def setup(self, options: Options) -> str:
        subset = "all 4000" if options.full else "1000"
        return (
            f"MNIST-1D, {subset} training examples, a {DEPTH}-block 1-d CNN (width {WIDTH}, stride 2 after the first "
            f"block, so the last maps are 5 long), SGD with momentum 0.9, {self._epochs(options)} epochs at every "
            "batch size, learning rate 0.1·B/32 (the paper's linear scaling). Test error uses BN's running statistics."
        )

    def _epochs(self, options: Options) -> int:
        return 8 if options.full else 4

    def configs(self, options: Options) -> list[dict]:
        return [
            classify_config(
                self.name, options, norm, seed, batch_size=b, lr=0.1 * b / 32, epochs=self._epochs(options),
                depth=DEPTH, width=WIDTH, train_subset=None if options.full else 1000,
            )  # fmt: skip
            for norm in self.norms(options)
            for b in self.batch_sizes(options)
            for seed in options.seed_list()
        ]

    def analyze(self, records: list[RunRecord], figdir: Path, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "norm", "batch_size")
        sizes = self.batch_sizes(options)
        norms = [n for n in self.norms(options) if any((n, b) in groups for b in sizes)]
        error = {n: {b: [100 * (1 - v) for v in values(groups.get((n, b), []), "test_acc")] for b in sizes} for n in norms}

        fig, (ax,) = new_figure()
        for n in norms:
            plot_lines(ax, sizes, {n: seed_rows([error[n][b] for b in sizes])}, logx=True)
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel("test error (%)")
        ax.set_title("Test error vs batch size")
        result.figures.append(save(fig, figdir, "batch-size.png"))

        result.table_headers = ["norm"] + [f"B={b}" for b in sizes]
        result.table_rows = [[n] + [fmt(error[n][b]) for b in sizes] for n in norms]
        small, large = sizes[0], sizes[-1]
        if "batch" in norms:
            result.verdicts.append(compare(
                f"BN's test error is higher at batch {small} than at batch {large}",
                error["batch"][small], error["batch"][large], f"B={small}", f"B={large}", min_effect=0.5, unit="%",
            ))  # fmt: skip
        for n in norms:
            if n == "batch":
                continue
            result.verdicts.append(not_greater(
                f"{n}'s error does not grow at batch {small}", error[n][small], error[n][large], f"B={small}",
                f"B={large}", min_effect=0.5, unit="%",
            ))  # fmt: skip
            if "batch" in norms:
                result.verdicts.append(compare(
                    f"{n} beats BN at batch {small} (the paper: GN 24.1% vs BN 34.7% error at batch 2)",
                    error["batch"][small], error[n][small], "BN error", f"{n} error", min_effect=0.5, unit="%",
                ))  # fmt: skip
                growth = {m: [s - l for s, l in zip(error[m][small], error[m][large])] for m in ("batch", n)}
                result.verdicts.append(compare(
                    f"BN's error grows more than {n}'s from batch {large} to {small}",
                    growth["batch"], growth[n], "BN growth", f"{n} growth", min_effect=0.5, unit=" pts",
                ))  # fmt: skip
        self._explain_driver(result, groups, small)
        subset = 4000 if options.full else 1000
        steps = {b: self._epochs(options) * -(-subset // b) for b in sizes}
        result.notes.append(
            "Same epochs means fewer steps at larger batches: "
            + ", ".join(f"B={b}: {n} steps" for b, n in steps.items())
            + ". A norm whose error falls as the batch shrinks is mostly gaining steps, not losing accuracy to large "
            "batches; read the columns at equal batch size to compare norms."
        )
        return result

    def _explain_driver(self, result: StudyResult, groups: dict, small: int) -> None:
        last_length = 40
        for _ in range(DEPTH - 1):
            last_length = (last_length + 1) // 2
        layout = batch_layout((small, WIDTH, last_length))
        bn = groups.get(("batch", small), [])
        text = (
            f"What drives it: at batch {small}, BN's last layer takes each channel's mean and variance over "
            f"{layout.values_per_statistic} values ({small} examples x {last_length} positions), so the statistics it "
            "normalizes with in training are noisy and differ from the running averages used at test."
        )
        if bn:
            text += (
                f" Measured at batch {small}: BN test accuracy {fmt(values(bn, 'test_acc'), 100)}% with running "
                f"statistics vs {fmt(values(bn, 'test_acc_batch_stats'), 100)}% when test batches of 50 use their own."
            )
        result.notes.append(text)


STUDY = BatchSize()
