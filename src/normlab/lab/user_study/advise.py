"""``normlab advise``: which normalization to use for an architecture and batch size, with the reasons and the
published numbers behind them, and, given a ``normlab compare`` report, what the user's own machine measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..judging.report import load_recommendations, load_verdicts

__all__ = ["Advice", "advise", "ARCHITECTURES"]

ARCHITECTURES = ("cnn", "transformer", "rnn", "mlp", "gan")
_GN_TABLE = {32: (23.6, 24.1), 16: (23.7, 24.2), 8: (24.8, 24.0), 4: (27.3, 24.2), 2: (34.7, 24.1)}
# which of the user's lab studies speak to each architecture
_STUDIES = {
    "cnn": ("batch-size", "distributed", "weight-decay", "learning-rate"),
    "transformer": ("sequence",),
    "rnn": ("online",),
    "mlp": ("batch-dependence", "online"),
    "gan": ("contrast",),
}


@dataclass
class Advice:
    recommendation: str
    reasons: list[str]
    published: list[str]
    alternatives: list[str] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"use: {self.recommendation}", "why:"] + [f"  - {r}" for r in self.reasons]
        lines += ["published:"] + [f"  - {p}" for p in self.published]
        if self.alternatives:
            lines += ["alternatives:"] + [f"  - {a}" for a in self.alternatives]
        if self.measured:
            lines += ["measured on this machine (normlab compare):"] + [f"  - {m}" for m in self.measured]
        return "\n".join(lines)


def _gn_row(batch: int) -> str:
    key = min(_GN_TABLE, key=lambda b: abs(b - batch))
    bn, gn = _GN_TABLE[key]
    return (
        f"Wu & He 2018 (ResNet-50, ImageNet top-1 error, images per GPU): at {key}: BN {bn}%, GN {gn}%; "
        "BN 23.6% at 32, 34.7% at 2; GN 24.0-24.2% at every batch size"
    )


def _cnn(batch: int, distributed: bool) -> Advice:
    published = [_gn_row(batch)]
    if distributed and batch < 16:
        return Advice(
            "SyncBatchNorm (normlab.nn.SyncBatchNorm.convert_sync_batchnorm(model))",
            [
                f"{batch} images per device is too few for per-device BatchNorm statistics; SyncBatchNorm "
                "takes them over the global batch, exactly BatchNorm on it (normlab's distributed study "
                "checks this on gloo ranks)"
            ],
            published,
            ["GroupNorm(32): no communication, and flat in batch size"],
        )
    if batch >= 16:
        return Advice(
            "BatchNorm",
            [
                "at 16 or more examples per batch BN's statistics are stable, and BN is the most "
                "accurate of the per-layer norms there"
            ],
            published,
            ["GroupNorm(32) if the batch may shrink (detection, segmentation, fine-tuning)"],
        )
    if batch > 4:
        return Advice(
            "GroupNorm (32 groups; normlab.swap(model, 'batch', 'group'))",
            [
                f"at {batch} per batch BN starts to lose accuracy to its noisy statistics; GN does not "
                "depend on the batch"
            ],
            published,
            ["BatchNorm is still close at 8 per batch"],
        )
    return Advice(
        "GroupNorm (32 groups; normlab.swap(model, 'batch', 'group'))",
        [f"at {batch} per batch BN's statistics are too noisy and train/eval statistics disagree"],
        published + ["Wu & He 2018: Batch Renormalization at batch 4: 26.3%"],
        [
            "FrozenBatchNorm2d (normlab.freeze_batchnorm) when fine-tuning a model pretrained with BN",
            "Batch Renormalization (create_norm('batchrenorm', ...))",
        ],
    )


def _advice(arch: str, batch: int, distributed: bool) -> Advice:
    if arch == "cnn":
        return _cnn(batch, distributed)
    if arch == "transformer":
        return Advice(
            "LayerNorm (pre-norm), or RMSNorm",
            [
                "statistics per token: independent of the batch, of padding and of sequence length",
                "batch statistics of text fluctuate strongly, so BatchNorm is unstable in transformers",
            ],
            [
                "Zhang & Sennrich 2019: RMSNorm comparable to LN, 7%-64% faster",
                "Shen et al. 2020 (PowerNorm): naive BN unstable on NLP; PN beats LN by 0.4/0.6 BLEU (IWSLT14/WMT14)",
                "Zhu et al. 2025 (DyT): ImageNet top-1 LN vs DyT: ViT-B 82.3/82.5, ViT-L 83.1/83.6",
            ],
            ["DyT (create_norm('dyt', ...)): no statistics at all", "PowerNorm for BN-style running statistics"],
        )
    if arch == "rnn":
        return Advice(
            "LayerNorm",
            [
                "per example and time step: works at batch size 1 and on sequences of any length, the same in training "
                "and inference"
            ],
            ['Ba et al. 2016: "Batch normalization cannot be applied to online learning tasks"; LN works at batch 1'],
        )
    if arch == "mlp":
        if batch >= 32:
            return Advice(
                "BatchNorm1d",
                ["at 32 or more examples per batch BN's statistics are stable"],
                ["Ba et al. 2016: on ConvNets, LN speeds up training over no normalization but BN does better"],
                ["LayerNorm if batches are small or examples must not depend on each other"],
            )
        return Advice(
            "LayerNorm",
            [f"at {batch} per batch BN's statistics are noisy; LN is per example"],
            ['Ba et al. 2016: "Batch normalization cannot be applied to online learning tasks"'],
        )
    return Advice(
        "generator: BatchNorm (InstanceNorm for style transfer); discriminator: Spectral Normalization",
        [
            "InstanceNorm discards each image's contrast, which style transfer wants and classification does not",
            "spectral normalization bounds the discriminator's Lipschitz constant without batch statistics",
        ],
        [
            'Ulyanov et al. 2016: IN at training and test time improves stylization; "the generator network should '
            'discard contrast information in the content image"',
            "Miyato et al. 2018 (spectral normalization): no numbers in normlab's reference set",
        ],
    )


def advise(arch: str, batch_size: int, distributed: bool = False, report: str | Path | None = None) -> Advice:
    """A recommendation for ``arch`` at ``batch_size`` examples per device, with reasons, the published numbers,
    alternatives, and (with ``report``, a ``normlab compare`` output directory) the user's own verdicts.

    Example::

        >>> from normlab.lab.user_study.advise import advise
        >>> advise("cnn", 2).recommendation
        "GroupNorm (32 groups; normlab.swap(model, 'batch', 'group'))"
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"advise: arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"advise: batch_size must be a positive int, got {batch_size!r}")
    advice = _advice(arch, batch_size, distributed)
    if report is not None:
        verdicts = load_verdicts(Path(report), option="--report")
        advice.measured = [
            f"[{study}] {claim}: {outcome}" for (study, claim), outcome in verdicts.items() if study in _STUDIES[arch]
        ]
        advice.measured += [
            f"[{study}] recommended at {line}"
            for study, lines in load_recommendations(Path(report)).items()
            for line in lines
        ]
        if not advice.measured:
            advice.measured = [f"the report holds no study for {arch} ({', '.join(_STUDIES[arch])})"]
    return advice
