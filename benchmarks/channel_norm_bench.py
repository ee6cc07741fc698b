"""CPU benchmark: normlab.nn.LayerNorm2d / RMSNorm2d against the usual permute form (timm's LayerNorm2d:
permute to NHWC, ``F.layer_norm``, permute back), forward + backward, in the same run; prints ratios.

    python benchmarks/channel_norm_bench.py [--repeats 15] [--rounds 5] [--markdown]

A ratio below 1 means normlab is faster. Both compute the same values (checked here before timing).
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F
from timing import forward_backward_seconds

import normlab.nn as nl


class PermuteLayerNorm2d(torch.nn.LayerNorm):
    """timm's LayerNorm2d: permute, layer_norm over the last dim, permute back."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class PermuteRMSNorm2d(torch.nn.RMSNorm):
    def forward(self, x):
        return F.rms_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.eps).permute(0, 3, 1, 2)


CASES = [
    ("LayerNorm2d", lambda: PermuteLayerNorm2d(96, eps=1e-6), lambda: nl.LayerNorm2d(96), (32, 96, 56, 56)),
    ("LayerNorm2d", lambda: PermuteLayerNorm2d(384, eps=1e-6), lambda: nl.LayerNorm2d(384), (32, 384, 14, 14)),
    ("RMSNorm2d", lambda: PermuteRMSNorm2d(96, eps=1e-6), lambda: nl.RMSNorm2d(96), (32, 96, 56, 56)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| case | shape | layout | permute form ms | normlab ms | normlab/permute |")
    print("|---|---|---|---|---|---|")
    for name, make_theirs, make_ours, shape in CASES:
        for layout in ("contiguous", "channels_last"):
            x = torch.randn(shape)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            theirs, ours = make_theirs(), make_ours()
            torch.testing.assert_close(ours(x), theirs(x))
            rounds = [
                (forward_backward_seconds(theirs, x, args.repeats), forward_backward_seconds(ours, x, args.repeats))
                for _ in range(args.rounds)
            ]
            t_theirs, t_ours = min(r[0] for r in rounds), min(r[1] for r in rounds)
            print(
                f"| {name} | {tuple(shape)} | {layout} | {t_theirs * 1e3:.2f} | {t_ours * 1e3:.2f} | "
                f"{t_ours / t_theirs:.2f} |"
            )


if __name__ == "__main__":
    main()
