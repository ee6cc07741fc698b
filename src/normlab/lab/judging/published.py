"""Published numbers the report shows beside its own measurements. Always quoted as "published", never as ours.

Copied from the papers (via the project's reference-results notes); each entry names its source. Small-scale reruns
are not expected to hit these numbers, only to show (or fail to show) the same direction.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Anchor", "ANCHORS"]


@dataclass(frozen=True)
class Anchor:
    source: str
    text: str
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()


ANCHORS: dict[str, list[Anchor]] = {
    "batch-size": [
        Anchor(
            "Wu & He 2018, Group Normalization (arXiv 1803.08494), Table 2 / Fig. 1",
            "ResNet-50 on ImageNet, top-1 validation error (%), batch = images per GPU, 8 GPUs, BN not synced; "
            "learning rate 0.1·N/32.",
            ("batch per GPU", "32", "16", "8", "4", "2"),
            (("BN", "23.6", "23.7", "24.8", "27.3", "34.7"), ("GN", "24.1", "24.2", "24.0", "24.2", "24.1")),
        ),
        Anchor("Wu & He 2018, Table 1", "At batch 32: BN 23.6, LN 25.3, IN 28.4, GN 24.1; WN 28.2 (footnote)."),
        Anchor(
            "Wu & He 2018",
            "Batch Renorm at batch 4: 26.3 (r_max 1.5, d_max 0.5). ResNet-101 at batch 2: GN 23.0 vs BN 31.9.",
        ),
    ],
    "online": [
        Anchor(
            "Ba et al. 2016, Layer Normalization (arXiv 1607.06450)",
            '"Batch normalization cannot be applied to online learning tasks"; LN works at batch size 1.',
        ),
        Anchor(
            "Ioffe 2017, Batch Renormalization (arXiv 1702.03275)",
            "Non-i.i.d. batches (16 labels x 2 images): BN 67% with moving averages at test, 76.5% with batch "
            "statistics at test; Batch Renorm 78.5%.",
        ),
    ],
    "learning-rate": [
        Anchor(
            "Santurkar et al. 2018 (arXiv 1805.11604)",
            "BN makes the loss landscape smoother (better Lipschitzness of loss and gradients); injecting "
            "non-stationary noise after BN hardly hurts, so reducing 'internal covariate shift' is not the reason.",
        ),
    ],
    "weight-decay": [
        Anchor(
            "van Laarhoven 2017 (arXiv 1706.05350); Zhang et al. 2018 (arXiv 1810.12281)",
            "A layer followed by BN is scale invariant, L(αw) = L(w); the gradient scales as 1/‖w‖, so the "
            "effective step is proportional to lr/‖w‖²; without weight decay ‖w‖ grows and the effective learning "
            'rate falls. "L2 regularization has no regularizing effect when combined with normalization."',
        ),
    ],
    "batch-dependence": [
        Anchor(
            "Salimans & Kingma 2016, Weight Normalization (arXiv 1602.07868)",
            "CIFAR-10 test error, no augmentation. BN training about 16% slower; WN not noticeably slower.",
            ("model", "test error %"),
            (
                ("normal parameterization", "8.43"),
                ("mean-only BN", "8.52"),
                ("WN", "8.46"),
                ("BN", "8.05"),
                ("WN + mean-only BN", "7.31"),
            ),
        ),
        Anchor(
            "Ba et al. 2016, Table 1 (invariances)",
            "Single-case re-scale invariance: BN no, WN no, LN yes; dataset re-scale: BN yes, WN no, LN yes.",
        ),
    ],
    "contrast": [
        Anchor(
            "Ulyanov et al. 2016 (arXiv 1607.08022); Huang & Belongie 2017 (AdaIN)",
            'IN at training and test time improves stylization; "the generator network should discard contrast '
            'information in the content image". AdaIN(x, y) = σ(y)·(x − μ(x))/σ(x) + μ(y).',
        ),
    ],
    "sequence": [
        Anchor("Zhang & Sennrich 2019, RMSNorm (arXiv 1910.07467)", "Comparable to LN, 7%-64% faster running time."),
        Anchor(
            "Shen et al. 2020, PowerNorm (arXiv 2003.07845)",
            "Batch statistics of NLP data fluctuate strongly, so naive BN is unstable; PN beats LN by 0.4/0.6 BLEU "
            "(IWSLT14/WMT14).",
        ),
        Anchor(
            "Zhu et al. 2025, DyT (arXiv 2503.10622)",
            "ImageNet top-1 LN vs DyT: ViT-B 82.3/82.5, ViT-L 83.1/83.6, ConvNeXt-B 83.7/83.7.",
        ),
    ],
}
