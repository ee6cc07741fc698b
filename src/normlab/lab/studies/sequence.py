"""Study `sequence`: transformers use LayerNorm; BatchNorm's statistics fluctuate on text (PowerNorm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunConfig, make_config
from ..judging.fairness import Budgets, Selection
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
    not_greater,
    plot_lines,
    save,
    values,
)
from ..metrics import BATCH_VAR_FLUCTUATION, DIVERGED, TEST_BPC, VALID_BPC
from ..store import RunRecord

BATCH = 32
LR = 1e-2  # the centre of each norm's learning-rate grid
FLUCTUATION_LR = LR  # the text model's rate for the fluctuation measure (untuned: the rate is part of it)
SEEDS = 3  # each language model costs about 35 s on one core: the study's seeds are fewer than the CNN studies'


class Sequence(Study):
    name = "sequence"
    title = "Normalization in transformers"
    claim = (
        "Transformers use LN: on text, LN (and RMSNorm and DyT, about as good) beat naive BN, whose batch "
        "statistics fluctuate more across steps than on images."
    )
    source = "Ba et al. 2016; Zhang & Sennrich 2019 (RMSNorm); Shen et al. 2020 (PowerNorm); Zhu et al. 2025 (DyT)"
    default_norms = ("layer", "rms", "dyt", "batch")
    target = Target(TEST_BPC, 2.4, higher_is_better=False, task="char_lm")
    # each language model costs about half a minute on one core: the grid trains one seed at the study's budget,
    # screened at half of it (a quarter would leave 100 steps, half of them warmup)
    selection = Selection(task="char_lm", seeds=1, budget=1.0, halving=1)
    budgets = Budgets(scale=1.0, unit=" bpc")

    def setup(self, options: Options) -> str:
        return (
            f"Character-level pre-norm transformer (2 blocks, width 64, 4 heads) on CPython's pydoc topics text, "
            "AdamW (50 warm-up steps, the peak rate held, then a 1-sqrt decay over the last 20% of the steps; peak "
            f"rate chosen per norm, grid around 1e-2), {self._steps(options)} steps of {BATCH} padded "
            "sequences of random length 16-64, 3 seeds; test "
            "bits per character on full-length windows of the second half of the held-out last 10% (the first half "
            "is the validation text rates are chosen on; BN uses its running statistics). DyT follows its paper's "
            "recipe for language models (alpha0 0.8 before attention, 0.2 elsewhere). "
            "BN is applied naively over every token of the batch, padding included. Fluctuation (PowerNorm's Fig. 2): "
            "how far each step's batch variance of the last block's norm input strays from the running variance BN "
            "keeps (momentum 0.1), relative to it, root mean square over the steps after the first 20, averaged over "
            f"features; measured at fixed recipes, for the rate is part of it (a run at 3e-2 fluctuates about twice "
            f"as much as one at 1e-2): the BN transformer at lr {FLUCTUATION_LR:g} (the grid's centre), the image "
            "reference at the last BN of the MNIST-1D CNN (3 blocks, batch 16, SGD lr 0.05), for the same steps."
        )

    def _steps(self, options: Options) -> int:
        return 800 if options.full else 400  # T; the verdicts are judged at T and 2T, and longer where they move

    def _transformer(self, options: Options, norm: str, seed: int, **fields: Any) -> RunConfig:
        return make_config(
            "char_lm",
            study=self.name,
            norm=norm,
            seed=seed,
            device=options.device,
            batch_size=BATCH,
            seq_len=64,
            steps=self._steps(options),
            warmup=50,
            lr_schedule="wsd",
            **fields,
        )

    def configs(self, options: Options) -> list[RunConfig]:
        seeds = options.seed_list(default=SEEDS)
        runs = [self._transformer(options, norm, seed, lr=LR) for norm in self.norms(options) for seed in seeds]
        if "batch" in self.norms(options):  # PowerNorm's measure, at fixed recipes (the rate is part of it)
            runs += [
                self._transformer(options, "batch", seed, lr=FLUCTUATION_LR, record_batch_stats=True) for seed in seeds
            ]
            runs += [
                classify_config(
                    self.name,
                    options,
                    "batch",
                    seed,
                    batch_size=16,
                    lr=0.05,
                    steps=self._steps(options),
                    record_batch_stats=True,
                    lr_schedule="wsd",
                )
                for seed in seeds
            ]
        return runs

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "task", "norm", "record_batch_stats")
        norms = [n for n in self.norms(options) if ("char_lm", n, False) in groups]
        fig, (ax1, ax2) = new_figure(2)
        for n in norms:
            runs = groups[("char_lm", n, False)]
            length = min(len(r.curves[VALID_BPC]) for r in runs)
            plot_lines(ax1, runs[0].curves["step"], {n: [r.curves[VALID_BPC][:length] for r in runs]})
        ax1.set_xlabel("step"), ax1.set_ylabel("validation bpc (first 2048 characters)"), ax1.set_title("Character LM")
        text_bn, image_bn = groups.get(("char_lm", "batch", True), []), groups.get(("classify", "batch", True), [])
        fluct = {
            "text (transformer)": values(text_bn, BATCH_VAR_FLUCTUATION),
            "images (CNN)": values(image_bn, BATCH_VAR_FLUCTUATION),
        }
        shown = {k: v for k, v in fluct.items() if v}
        ax2.bar(list(shown), [sum(v) / len(v) for v in shown.values()])
        ax2.set_ylabel("rms of (batch var - running var) / running var"), ax2.set_title("Batch-statistic fluctuation")
        result.figures.append(save(fig, figdir, "sequence.png"))

        bpc = {n: values(groups[("char_lm", n, False)], TEST_BPC) for n in norms}
        result.table_headers = ["norm", "test bpc", "diverged runs"]
        result.table_rows = [
            [n, fmt(bpc[n], digits=3), str(int(sum(values(groups[("char_lm", n, False)], DIVERGED))))] for n in norms
        ]
        if "layer" in norms:
            for other in (n for n in norms if n not in ("layer", "rms", "dyt")):
                result.verdicts.append(
                    compare(
                        f"LN reaches lower test bpc than {other}",
                        bpc[other],
                        bpc["layer"],
                        other,
                        "LN",
                        min_effect=0.01,
                        unit=" bpc",
                    )
                )
            if "rms" in norms:
                result.verdicts.append(
                    not_greater(
                        "RMSNorm is as good as LN (its bpc is not higher)",
                        bpc["rms"],
                        bpc["layer"],
                        "RMS",
                        "LN",
                        min_effect=0.01,
                        unit=" bpc",
                    )
                )
            if "dyt" in norms:
                result.verdicts.append(
                    not_greater(
                        "DyT is as good as LN (its bpc is not higher; Zhu et al. 2025)",
                        bpc["dyt"],
                        bpc["layer"],
                        "DyT",
                        "LN",
                        min_effect=0.01,
                        unit=" bpc",
                    )
                )
        if text_bn and image_bn:
            result.verdicts.append(
                compare(
                    "BN's batch variance fluctuates more across steps on text than on images",
                    fluct["text (transformer)"],
                    fluct["images (CNN)"],
                    "text",
                    "images",
                    min_effect=0.05,
                )
            )
        return result


STUDY = Sequence()
