"""Study `batch-dependence`: WN, LN, GN are deterministic per example; BN in training is not (Salimans & Kingma)."""

from __future__ import annotations

from pathlib import Path

from ...registry import is_batch_dependent
from ..config import RunConfig
from ..judging.fairness import Selection
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
    not_applicable_notes,
    plot_lines,
    save,
    values,
)
from ..metrics import OUTPUT_SPREAD, TEST_ACC
from ..store import RunRecord

# label -> (activation norm, weight_norm): Weight Normalization reparametrizes the weights of every layer, so these
# variants are a registry norm plus WN, not registry entries.
VARIANTS = {"weight": ("none", True), "weight+meanonly": ("meanonly", True)}
DETERMINISTIC_BELOW = 1e-5  # float32 rounding of identical computations on different batch neighbours


class BatchDependence(Study):
    name = "batch-dependence"
    title = "Which normalizations depend on the rest of the batch"
    claim = (
        "WN, LN and GN compute each example's output from that example alone; BN in training does not. "
        "WN + mean-only BN trains better than WN alone."
    )
    source = "Salimans & Kingma 2016 (Weight Normalization), Ba et al. 2016"
    default_norms = ("batch", "layer", "group", "weight", "weight+meanonly", "none")
    variants = tuple(VARIANTS)
    target = Target(TEST_ACC, 0.90)
    selection = Selection()

    def setup(self, options: Options) -> str:
        return (
            "MNIST-1D, 3-block 1-d CNN, SGD with momentum 0.9 and a warmup-stable-decay schedule (peak rate chosen "
            "per variant, "
            f"grid around 0.05), batch 64, "
            f"{self._epochs(options)} epochs. "
            "'weight' is Weight Normalization on every conv and the head with no activation norm, started from its "
            "paper's data-dependent initialization; 'weight+meanonly' adds mean-only BN (its paper's pairing). Batch "
            "dependence: after training, one test example is put in 12 random batches of 16 "
            "and run in training mode; the spread is the std of its logits across batches over their mean magnitude."
        )

    def _epochs(self, options: Options) -> int:
        return 16 if options.full else 8

    def configs(self, options: Options) -> list[RunConfig]:
        runs = []
        for label in self.norms(options):
            norm, wn = VARIANTS.get(label, (label, False))
            for seed in options.seed_list():
                runs.append(
                    classify_config(
                        self.name,
                        options,
                        norm,
                        seed,
                        variant=label,
                        weight_norm=wn,
                        batch_size=64,
                        lr=0.05,
                        epochs=self._epochs(options),
                        output_spread=True,
                        lr_schedule="wsd",
                        spread_batch=16,
                    )
                )
        return runs

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult(notes=not_applicable_notes(records))
        groups = group_by(records, "variant")
        labels = [v for v in self.norms(options) if (v,) in groups]
        fig, (ax1, ax2) = new_figure(2)
        for v in labels:
            runs = groups[(v,)]
            length = min(len(r.curves["loss"]) for r in runs)
            plot_lines(ax1, runs[0].curves["step"], {v: [r.curves["loss"][:length] for r in runs]})
        ax1.set_yscale("log")
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss")
        ax1.set_title("Training")
        spreads = {v: values(groups[(v,)], OUTPUT_SPREAD) for v in labels}
        ax2.bar(range(len(labels)), [max(1e-9, sum(s) / len(s)) for s in spreads.values()])
        ax2.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax2.set_yscale("log")
        ax2.set_ylabel("output spread across batches")
        ax2.set_title("Batch dependence")
        result.figures.append(save(fig, figdir, "batch-dependence.png"))

        result.table_headers = ["variant", "test acc %", "output spread across batches (training mode)"]
        result.table_rows = [[v, fmt(values(groups[(v,)], TEST_ACC), 100), f"{max(spreads[v]):.1e}"] for v in labels]
        for v in labels:
            worst = max(spreads[v])
            deterministic = worst < DETERMINISTIC_BELOW
            expected_dependent = is_batch_dependent(VARIANTS.get(v, (v,))[0])
            if expected_dependent:
                claim, ok = f"{v}'s training-mode output for an example depends on its batch", not deterministic
            else:
                claim, ok = f"{v}'s output for an example does not depend on its batch", deterministic
            evidence = f"largest spread {worst:.1e}; threshold {DETERMINISTIC_BELOW:g} (float32 rounding)"
            result.verdicts.append(check(claim, ok, evidence))
        acc = {v: values(groups[(v,)], TEST_ACC, 100) for v in labels}
        if "weight" in acc and "weight+meanonly" in acc:
            result.verdicts.append(
                compare(
                    "WN + mean-only BN is more accurate than WN alone",
                    acc["weight+meanonly"],
                    acc["weight"],
                    "WN+mean-only BN",
                    "WN",
                    min_effect=0.5,
                    unit="%",
                )
            )
        if "weight" in acc and "batch" in acc:
            result.verdicts.append(
                compare(
                    "BN is more accurate than WN alone",
                    acc["batch"],
                    acc["weight"],
                    "BN",
                    "WN",
                    min_effect=0.5,
                    unit="%",
                )
            )
        return result


STUDY = BatchDependence()
