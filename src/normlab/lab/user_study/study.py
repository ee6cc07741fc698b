"""The user's study: which normalization trains *your* model best at *your* batch sizes.

``normlab compare --model MODEL --data DATA --norms batch,group,layer2d --batch-sizes 4,32`` builds one
:class:`UserStudy`: for each method the model's norms are swapped (:func:`normlab.swap`), each setting (method x
batch size) trains at its own learning rate chosen on a validation split, as the built-in studies choose it, on
paired seeds, at budgets T and 2T (more where a verdict is not settled); the analysis compares the methods pairwise
at each batch size, in the order the user listed them, and recommends per batch size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...registry import canonical_name
from ..config import RunConfig, make_config
from ..judging.fairness import VALIDATION_LOSS, Budgets, Selection
from ..judging.study import (
    Options,
    Study,
    StudyResult,
    Target,
    fmt,
    group_by,
    new_figure,
    plot_lines,
    save,
    seed_rows,
    values,
)
from ..judging.verdicts import Outcome, Sample, Verdict, compare
from ..metrics import MEMORY_MB, STEP_SECONDS, TEST_ACC, TEST_LOSS
from ..store import RunRecord

if TYPE_CHECKING:
    from ...transform import SwapReport

__all__ = ["UserSpec", "UserStudy", "USER_STUDY"]

USER_STUDY = "your-model"


@dataclass(frozen=True, kw_only=True)
class UserSpec:
    """What the user asked for (``normlab compare --model ... --data ...``)."""

    model: str
    data: str
    norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    steps: int | None = None
    lr: float | None = None  # None: 0.1 x B/32 for SGD, 1e-3 for AdamW: the centre of each setting's grid
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    amp: bool = False
    channels_last: bool = False
    loader_workers: int = 0
    num_groups: int = 32

    def centre_lr(self, batch: int) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.optimizer == "adamw" else float(f"{0.1 * batch / 32:.3g}")


class UserStudy(Study):
    """One user's study; built by :func:`normlab.lab.user_study.prepare.prepare_user_study` after its inputs were
    checked."""

    name = USER_STUDY
    source = "your model and data, measured on this machine"

    def __init__(
        self, spec: UserSpec, *, kinds: list[str], classification: bool, fingerprint: str, swaps: dict[str, str]
    ) -> None:
        self.spec, self.kinds, self.classification, self.fingerprint, self.swaps = (
            spec,
            kinds,
            classification,
            fingerprint,
            swaps,
        )
        self.default_norms = tuple(canonical_name(n) for n in spec.norms)
        self.title = f"Your model: {spec.model} on {spec.data}"
        self.claim = "Which normalization trains this model best at each batch size."
        self.metric = TEST_ACC if classification else TEST_LOSS
        self.target = Target(self.metric, threshold=None, higher_is_better=classification)
        self.selection = Selection(task="user", seeds=2, scoring=None if classification else VALIDATION_LOSS)
        self.budgets = Budgets() if classification else Budgets(scale=1.0, unit=" in loss")

    def swap_from(self, norm: str) -> list[str]:
        """The model's norm kinds that ``norm`` replaces (none: the model as built)."""
        return [k for k in self.kinds if k != norm]

    def configs(self, options: Options) -> list[RunConfig]:
        s = self.spec
        return [
            make_config(
                "user",
                study=self.name,
                norm=norm,
                seed=seed,
                device=options.device,
                data=s.data,
                model=s.model,
                model_args=dict(s.model_args) or None,
                swap_from=self.swap_from(norm),
                num_groups=s.num_groups,
                fingerprint=self.fingerprint,
                batch_size=b,
                optimizer=s.optimizer,
                lr=s.centre_lr(b),
                weight_decay=s.weight_decay,
                epochs=s.epochs,
                steps=s.steps,
                amp=s.amp,
                channels_last=s.channels_last,
                loader_workers=s.loader_workers,
            )
            for norm in self.default_norms
            for b in s.batch_sizes
            for seed in options.seed_list(default=3)
        ]

    def setup(self, options: Options) -> str:
        s = self.spec
        length = f"{s.steps} steps" if s.steps else f"{s.epochs} epoch(s)"
        swaps = "; ".join(f"{n}: {self.swaps[n]}" for n in self.default_norms)
        return (
            f"{s.model} ({', '.join(f'{k}={v}' for k, v in s.model_args.items()) or 'its defaults'}) on "
            f"{s.data}, trained {length} per run at batch sizes {', '.join(map(str, s.batch_sizes))} with "
            f"{'AdamW' if s.optimizer == 'adamw' else 'SGD with momentum 0.9'}, a cosine decay to 0, weight decay "
            f"{s.weight_decay:g} (never on norm parameters or biases){', bf16 autocast' if s.amp else ''}"
            f"{', channels_last' if s.channels_last else ''}, on {options.device}. Norms: {swaps}. Every method "
            "starts from the same weights in the layers it shares with the others and sees the same batches "
            "(paired seeds). Time per step is the mean wall time of a training step (forward, backward, "
            "optimizer step) on this machine as loaded during the run; memory is CUDA's peak allocation, or on "
            "CPU the parameters, gradients, optimizer state and the activations saved for backward at one step."
        )

    # -- analysis ---------------------------------------------------------------------------------------------------
    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        result = StudyResult()
        norms, sizes = list(self.default_norms), list(self.spec.batch_sizes)
        groups = group_by(records, "norm", "batch_size")
        scale, unit = (100.0, "%") if self.classification else (1.0, "")
        score = {(n, b): values(groups.get((n, b), []), self.metric, scale) for n in norms for b in sizes}
        failures = {(r.config["norm"], r.config["batch_size"]): r.note for r in records if r.status == "not_applicable"}
        result.figures.append(self._figure(norms, sizes, score, figdir))
        result.figures.append(self._curves(norms, sizes, groups, figdir))
        result.table_headers = ["norm"] + [
            f"B={b}: {'accuracy %' if self.classification else 'loss'}, s/step, MiB" for b in sizes
        ]
        result.table_rows = [
            [n] + [self._cell(groups.get((n, b), []), score[(n, b)], failures.get((n, b))) for b in sizes]
            for n in norms
        ]
        result.notes += [f"{n} at batch size {b}: {note}" for (n, b), note in sorted(failures.items())]
        by_size: dict[int, dict[tuple[str, str], Verdict]] = {}
        for b in sizes:
            verdicts = by_size.setdefault(b, {})
            for i, first in enumerate(norms):
                for later in norms[i + 1 :]:
                    hi, lo = (
                        (score[(later, b)], score[(first, b)])
                        if self.classification
                        else (score[(first, b)], score[(later, b)])
                    )  # lower loss is better: "later beats first"
                    v = compare(
                        f"{later} beats {first} at batch size {b} on your model",
                        hi,
                        lo,
                        later if self.classification else first,
                        first if self.classification else later,
                        unit=unit,
                    )
                    verdicts[(later, first)] = v
                    result.verdicts.append(v)
            result.recommendations.append(self._recommend(b, norms, score, verdicts, failures))

        def recommend(settled: dict[str, Verdict]) -> list[str]:
            return [
                self._recommend(b, norms, score, {k: settled.get(v.claim, v) for k, v in by_size[b].items()}, failures)
                for b in sizes
            ]

        result.recommend = recommend
        return result

    def _cell(self, runs: list[RunRecord], score: Sample, failure: str | None) -> str:
        if failure:
            return "fails"
        if not runs:
            return "-"
        step = np.mean([r.metrics.get(STEP_SECONDS, np.nan) for r in runs])
        memory = np.mean([r.metrics.get(MEMORY_MB, np.nan) for r in runs])
        return f"{fmt(score, digits=1 if self.classification else 3)}, {step:.3g} s, {memory:.3g} MiB"

    def _recommend(
        self,
        b: int,
        norms: list[str],
        score: dict[tuple[str, int], Sample],
        verdicts: dict[tuple[str, str], Verdict],
        failures: dict[tuple[str, int], str],
    ) -> str:
        sign = 1.0 if self.classification else -1.0
        trained = [n for n in norms if score[(n, b)]]
        if not trained:
            return f"batch size {b}: no recommendation (no method trained at this batch size)"
        best = max(trained, key=lambda n: sign * float(np.mean(score[(n, b)])))

        def beats(winner: str, loser: str) -> bool:  # verdicts[(a, b)] judges the claim "a beats b"
            if (winner, loser) in verdicts:
                return verdicts[(winner, loser)].outcome == Outcome.REPRODUCED
            return (loser, winner) in verdicts and verdicts[(loser, winner)].outcome == Outcome.CONTRADICTED

        ties = [n for n in trained if n != best and not beats(best, n)]
        text = f"batch size {b}: {best}"
        if ties:
            text += f" (or {', '.join(ties)}: no significant difference)"
        beaten = [n for n in trained if n != best and beats(best, n)]
        if beaten:
            text += f"; it beats {', '.join(beaten)}"
        out = [n for n in norms if n not in trained]
        if out:
            text += "; not compared: " + ", ".join(
                f"{n} ({'fails' if (n, b) in failures else 'not trained'})" for n in out
            )
        return text

    def _figure(
        self, norms: list[str], sizes: list[int], score: dict[tuple[str, int], Sample], figdir: Path | None
    ) -> str:
        fig, (ax,) = new_figure()
        for n in norms:
            plot_lines(ax, sizes, {n: seed_rows([score[(n, b)] for b in sizes])}, logx=True)
        ax.set_xlabel("batch size")
        ax.set_ylabel("test accuracy (%)" if self.classification else "test loss")
        ax.set_title("Your model: each method at its own learning rate")
        return save(fig, figdir, f"{self.name}.png")

    def _curves(
        self, norms: list[str], sizes: list[int], groups: dict[tuple[Any, ...], list[RunRecord]], figdir: Path | None
    ) -> str:
        fig, axes = new_figure(ncols=len(sizes), width=4.0)
        for ax, b in zip(axes, sizes, strict=True):
            for n in norms:
                runs = [r for r in groups.get((n, b), []) if r.curves.get("loss")]
                if runs:
                    length = min(len(r.curves["loss"]) for r in runs)
                    ax.plot(
                        runs[0].curves["step"][:length], np.mean([r.curves["loss"][:length] for r in runs], 0), label=n
                    )
            ax.set_title(f"training loss, batch size {b}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return save(fig, figdir, f"{self.name}-curves.png")


def describe_swap(report: SwapReport) -> str:
    """A short account of one method's swap (:class:`normlab.transform.SwapReport`)."""
    changed = Counter(f"{old} -> {new.split('(')[0]}" for _, old, new in report.changed)
    text = ", ".join(f"{count} {what}" for what, count in changed.items()) or "nothing swapped"
    if report.skipped:
        text += f"; {len(report.skipped)} left as they were ({report.skipped[0][1]})"
    return text
