"""What a study is: a claim, the runs that test it, and an analysis that turns stored results into figures, a
table and verdicts. Verdicts come from the data by a stated criterion, never from the study's text."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import RunConfig, as_dict
from ..metrics import DIVERGED, TEST_ACC
from ..store import RunRecord, trunk_key
from .verdicts import (
    CRITERION,
    Budgets,
    Outcome,
    Sample,
    Verdict,
    check,
    compare,
    difference_test,
    mean_spread,
    not_greater,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NOT_TRAINED = Outcome.NOT_TRAINED

__all__ = [
    "Options",
    "Study",
    "StudyResult",
    "Verdict",
    "Sample",
    "compare",
    "difference_test",
    "not_greater",
    "group_by",
    "mean_spread",
    "seed_rows",
    "converged",
    "CRITERION",
    "CONVERGENCE",
    "NOT_TRAINED",
    "Outcome",
    "check",
    "setting_label",
    "varying_fields",
]

PLATEAU_FRACTION = 0.10
STUCK_FRACTION = 0.20
CONVERGENCE = (
    "Every compared setting trains at the study's budget T and at 2T from one trajectory each: a "
    "warmup-stable-decay schedule holds the peak rate and a short cooldown (the last 20% of a budget's steps, "
    "1 - sqrt decay) branches off at each budget, so both cost 2.2T rather than 3T (Hägele et al. 2024). The "
    "settings under a verdict that more training could still change train at 4T and 8T too (Criterion). How far "
    "each setting's metric moves per doubling is reported as data, not as a gate. The plateau test is reported "
    "too: a run's training loss has reached a plateau when its mean over the last fifth of training is lower than "
    f"its mean over the fourth fifth by less than {PLATEAU_FRACTION:.0%} of its whole fall (a stuck run, falling "
    f"less than {STUCK_FRACTION:.0%} of its highest loss, is judged against that share: a stuck run is a result "
    "too). A run that diverged is a finished result, scored at chance. A study's runs have trained when its best "
    "setting reaches the study's target at 2T. Where methods are compared, each setting trains at its own "
    "learning rate, chosen on a validation split held out of the training data (each study says how)."
)


def converged(curve: Sequence[float]) -> bool:
    """The plateau test of :data:`CONVERGENCE` on a run's loss curve (points evenly spaced in steps)."""
    loss = [v for v in curve if math.isfinite(v)]
    if len(loss) < 5:
        return False
    # fifths of the curve, averaged: a noisy curve (a class-sorted stream) is judged by its level, not one point
    n = len(loss)
    fourth, last = loss[int(0.6 * n) : int(0.8 * n)], loss[int(0.8 * n) :]
    top, before, end = max(loss), float(np.mean(fourth)), float(np.mean(last))
    # a curve that hardly fell is a run that hardly learned, a result too (BN at batch 1): its plateau is judged
    # against a fall of STUCK_FRACTION of its highest loss
    total = max(top - end, STUCK_FRACTION * abs(top))
    return (before - end) < PLATEAU_FRACTION * total


def setting_converged(records: Sequence[RunRecord]) -> bool:
    """The plateau test on the mean loss curve of one setting's seeds (seed noise averages out; one seed's wobble
    does not decide). Diverged runs are finished results and are left out; a setting whose runs all diverged has
    converged."""
    curves = [r.curves.get("loss") or [] for r in records if r.status == "done" and not r.metrics.get(DIVERGED)]
    if not curves:
        return True
    length = min(len(c) for c in curves)
    return converged(np.mean([c[:length] for c in curves], axis=0).tolist()) if length else False


@dataclass(frozen=True)
class Options:
    norms: tuple[str, ...] | None = None  # None: each study's defaults
    seeds: int | None = None
    full: bool = False
    device: str = "cpu"
    data: str | None = None  # "cifar10:PATH" / "mnist:PATH"
    nproc: int = 4  # ranks of the distributed study
    first_seed: int = 0  # seeds first_seed, first_seed + 1, ...
    budget: float = 1.0  # every run's training steps times this (below 1: a quick look, likely not trained)

    def describe(self) -> str:
        norms = ", ".join(self.norms) if self.norms else "each study's own"
        data = self.data or "embedded (MNIST-1D, digits, pydoc text)"
        seeds = f"{self.seeds} seeds" if self.seeds else "each study's seeds"
        budget = "" if self.budget == 1 else f", budget x{self.budget:g}"
        return (
            f"{seeds} from seed {self.first_seed}, norms: {norms}, {'full' if self.full else 'default'} settings, "
            f"device {self.device}, data {data}, {self.nproc} ranks for the distributed study{budget}"
        )

    def seed_list(self, default: int = 5) -> list[int]:
        """The seeds each setting runs: ``--seeds`` of them (else the study's ``default``, doubled with --full),
        starting at ``--first-seed``."""
        count = self.seeds if self.seeds is not None else (2 * default if self.full else default)
        return list(range(self.first_seed, self.first_seed + count))


@dataclass(frozen=True)
class Target:
    """What 'trained' means for a study: the best setting's mean ``metric`` must reach ``threshold``."""

    metric: str = TEST_ACC
    threshold: float | None = 0.90  # None: no target to reach (the user's model), any finished run meets it
    higher_is_better: bool = True
    task: str | None = None  # only runs of this task count (the sequence study's language models)

    def describe(self) -> str:
        if self.threshold is None:
            return (
                f"no target for {self.metric.replace('_', ' ')} (a model of your own has no known value to "
                "reach; the plateau and the doubled budget say whether it trained)"
            )
        if self.metric == TEST_ACC:
            return f"the best setting reaches at least {self.threshold:.0%} mean test accuracy"
        return f"the best setting reaches at most {self.threshold:g} mean {self.metric.replace('_', ' ')}"


@dataclass
class TrainingCheck:
    """Whether a study's runs trained: the target, the best setting, and the plateau count (data)."""

    target: str
    met: bool
    best: str
    converged: int  # settings (one configuration, all its seeds) whose loss reached a plateau
    settings: int  # settings checked
    unconverged: list[str] = field(default_factory=list)
    budget: str = "T"  # the budget the target is checked at

    def text(self) -> str:
        status = "met" if self.met else "NOT met"
        text = (
            f"Target at {self.budget}: {self.target}: {status} (best: {self.best}). Plateau (mean loss curve "
            f"over the seeds): {self.converged} of {self.settings} settings."
        )
        if self.unconverged:
            text += " No plateau: " + "; ".join(self.unconverged[:8]) + ("..." if len(self.unconverged) > 8 else ".")
        return text


@dataclass
class StudyResult:
    figures: list[str] = field(default_factory=list)
    table_headers: list[str] = field(default_factory=list)
    table_rows: list[list[str]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    training: TrainingCheck | None = None
    recommendations: list[str] = field(default_factory=list)  # what to use, where a study can say (the user's model)
    fairness: Any = None  # normlab.lab.judging.fairness.Fairness: how rates were chosen, which settings trained
    # the recommendations again from the settled verdicts (claim -> verdict), once the budgets have settled them
    recommend: Callable[[dict[str, Verdict]], list[str]] | None = field(default=None, repr=False, compare=False)


class Study:
    name: str
    title: str
    claim: str
    source: str
    default_norms: tuple[str, ...]
    variants: tuple[str, ...] = ()  # labels --norms accepts besides registry names (a norm plus WN, SyncBN...)

    target: Target = Target()
    # Fairness (normlab.lab.judging.fairness): how each compared setting's learning rate is chosen (None: as
    # written, for the reason ``untuned`` gives), and the budgets its verdicts are judged at.
    selection: Any = None
    untuned: str = ""
    budgets: Budgets = Budgets()  # the budgets its verdicts are settled over

    def norms(self, options: Options) -> tuple[str, ...]:
        return options.norms if options.norms else self.default_norms

    def configs(self, options: Options) -> list[RunConfig]:
        raise NotImplementedError

    def analyze(self, records: list[RunRecord], figdir: Path | None, options: Options) -> StudyResult:
        raise NotImplementedError

    def setup(self, options: Options) -> str:
        raise NotImplementedError


def varying_fields(configs: Sequence[RunConfig | Mapping[str, Any]]) -> list[str]:
    """The fields (but seed, where the run happens and what it measures besides training) that differ between
    ``configs`` (typed, or as stored)."""
    plain = [as_dict(c) for c in configs]
    ignored = {
        "seed",
        "doublings",
        "study",
        "device",
        "data_path",
        "grad_predictiveness",
        "output_spread",
        "scale_invariance",
        "contrast_strengths",
        "swap_from",
    }  # swap_from follows from the norm
    keys = sorted({k for c in plain for k in c} - ignored)
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in plain}) > 1]


# Flags that mark a run apart from the study's compared settings: shown by these words when set, not at all when not
# (a tuned run is not "record_batch_stats=False")
FLAG_LABELS = {"record_batch_stats": "fixed recipe, batch statistics recorded"}


def setting_label(config: RunConfig | Mapping[str, Any], varying: list[str]) -> str:
    """A setting's label: the ``varying`` fields' values (a study's own ``variant`` names its norm; a flag of
    :data:`FLAG_LABELS` by its words where set)."""
    config = as_dict(config)
    if "variant" in varying:  # a study's own label already names the norm and its options
        varying = [k for k in varying if k not in ("norm", "norm_options", "weight_norm")]
    parts = [
        (FLAG_LABELS[k] if k in FLAG_LABELS else f"{k}={config.get(k)}")
        for k in varying
        if k not in FLAG_LABELS or config.get(k)
    ]
    return ", ".join(parts) or str(config.get("variant") or config.get("norm"))


def check_training(target: Target, records: list[RunRecord], tuned: bool = False) -> TrainingCheck:
    """The :data:`CONVERGENCE` check of a study's finished runs against its ``target`` (``tuned``: the rates were
    chosen per setting, so the rate does not tell settings apart)."""
    done = [r for r in records if r.status == "done" and (target.task is None or r.config.get("task") == target.task)]
    varying = [k for k in varying_fields([r.config for r in done]) if k != "lr" or not tuned]
    settings: dict[str, list[RunRecord]] = {}
    for r in done:
        settings.setdefault(setting_label(r.config, varying), []).append(r)
    sign = 1.0 if target.higher_is_better else -1.0
    scored = {
        label: float(np.mean([r.metrics[target.metric] for r in runs if target.metric in r.metrics]))
        for label, runs in settings.items()
        if any(target.metric in r.metrics for r in runs)
    }
    if scored:
        best = max(scored, key=lambda label: sign * scored[label])
        value = scored[best]
        met = target.threshold is None or sign * value >= sign * target.threshold
        shown = f"{100 * value:.1f}%" if target.metric == TEST_ACC else f"{value:.3f}"
        best_text = f"{best}: {shown}"
    else:
        met, best_text = False, "no finished run"
    unconverged = sorted(label for label, runs in settings.items() if not setting_converged(runs))
    return TrainingCheck(
        target.describe(), met, best_text, len(settings) - len(unconverged), len(settings), unconverged
    )


def withheld(verdicts: list[Verdict], training: TrainingCheck) -> list[Verdict]:
    """When the study's target is not met, no verdict stands: 'inconclusive: not trained'."""
    if training.met:
        return verdicts
    return [
        dataclasses.replace(v, outcome=NOT_TRAINED, evidence=v.evidence + "; the study's target was not met")
        if v.outcome != Outcome.INCONCLUSIVE
        else v
        for v in verdicts
    ]


def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    m, s = mean_spread([v * scale for v in values])
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def group_by(records: list[RunRecord], *keys: str) -> dict[tuple, list[RunRecord]]:
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.status == "done":
            groups.setdefault(tuple(r.config.get(k) for k in keys), []).append(r)
    return groups


def not_applicable_notes(records: list[RunRecord]) -> list[str]:
    seen: dict[str, str] = {}
    for r in records:
        if r.status == "not_applicable":
            seen.setdefault(r.config["norm"], r.note)
    return [f"`{norm}` was not run here: {note}" for norm, note in sorted(seen.items(), key=lambda kv: str(kv[0]))]


def seed_rows(by_x: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per-x lists of per-seed values -> one row per seed across x (nan where a run is missing), for plot_lines."""
    seeds = max((len(v) for v in by_x), default=0)
    return [[v[i] if i < len(v) else math.nan for v in by_x] for i in range(seeds)]


def plot_lines(ax: Axes, xs: Sequence[float], groups: dict[str, list[list[float]]], logx: bool = False) -> None:
    """One line per label: the mean over seeds, shaded by the standard deviation."""
    for label, runs in groups.items():
        arr = np.asarray(runs, dtype=float)
        mean = np.nanmean(arr, axis=0)
        ax.plot(xs[: len(mean)], mean, marker="o", ms=3, label=label)
        if arr.shape[0] > 1:
            std = np.nanstd(arr, axis=0, ddof=1)
            ax.fill_between(xs[: len(mean)], mean - std, mean + std, alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def new_figure(ncols: int = 1, width: float = 5.0) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)
    return fig, list(axes[0])


def save(fig: Figure, figdir: Path | None, name: str) -> str:
    """Write ``fig`` as ``figdir/name`` and close it; with ``figdir`` None (an analysis whose figures no one will
    see: a longer budget's, or a round's before the last) only close it."""
    import matplotlib.pyplot as plt

    if figdir is None:
        plt.close(fig)
        return name
    figdir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(figdir / name, dpi=110)
    plt.close(fig)
    return name


def classify_config(
    study: str, options: Options, norm: str, seed: int, data: str = "mnist1d", task: str = "classify", **kw: Any
) -> RunConfig:
    """A run's full configuration (:func:`normlab.lab.config.make_config`); ``--data`` replaces the study's embedded
    image data set."""
    from ..config import make_config
    from ..training.data import parse_data_spec

    kind, path = parse_data_spec(options.data)
    if path is not None:
        kw["data_path"] = str(path)
    return make_config(
        task, study=study, data=data if kind == "default" else kind, norm=norm, seed=seed, device=options.device, **kw
    )


def sample(records: list[RunRecord], fn: Callable[[RunRecord], float]) -> Sample:
    """``fn(record)`` for each finished run of one setting, as a :class:`Sample` ordered by seed, naming the
    settings it comes from (what a verdict drawn from it rests on)."""
    ordered = sorted((r for r in records if r.status == "done"), key=lambda r: r.config.get("seed", 0))
    settings = tuple(dict.fromkeys(trunk_key(r.config) for r in ordered))
    return Sample([fn(r) for r in ordered], [int(r.config["seed"]) for r in ordered], settings)


def values(records: list[RunRecord], metric: str, scale: float = 1.0) -> Sample:
    """A metric of ``records`` (one setting, several seeds) as a :class:`Sample` ordered by seed."""
    return sample([r for r in records if metric in r.metrics], lambda r: scale * r.metrics[metric])
