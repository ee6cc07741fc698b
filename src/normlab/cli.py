"""The ``normlab`` command line: ``normlab explain`` (and the lab's ``normlab compare``)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__


def _explain(args: argparse.Namespace) -> int:
    from .explain import draw_cube, explain

    explanation = explain(args.name, args.shape, groups=args.groups, normalized_dims=args.normalized_dims)
    print(explanation.text())
    if args.figure:
        print(f"figure: {draw_cube(explanation, args.figure)}")
    return 0


def _list_norms(args: argparse.Namespace) -> int:
    from .registry import _REGISTRY

    for name in sorted(_REGISTRY):
        print(f"{name:10s} {_REGISTRY[name].summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Normalization layers for deep learning: explain them, convert models, re-test the claims.",
    )
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "explain",
        help="which values a method's statistics are taken over, for a given input shape",
        description="Print the axes a normalization reduces over, how many statistics it computes and over how "
        "many values each, whether it depends on the batch, its train/eval difference and its formula; "
        "optionally draw the Group Norm paper's N x C x H·W cube for that configuration.",
    )
    p.add_argument("name", help="batch, layer, instance, group or rms (aliases: bn, ln, in, gn)")
    p.add_argument("--shape", required=True, help="input shape N,C[,spatial...], e.g. 8,64,32,32")
    p.add_argument("--groups", type=int, default=None, help="GroupNorm's number of groups (default 32)")
    p.add_argument(
        "--normalized-dims", type=int, default=None, help="LayerNorm/RMSNorm: trailing dims normalized (default: all but N)"
    )
    p.add_argument("--figure", metavar="PATH", help="save the cube figure (PNG or SVG) to PATH")
    p.set_defaults(func=_explain)

    p = sub.add_parser("norms", help="list the registered normalization names", description="List create_norm's names.")
    p.set_defaults(func=_list_norms)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"normlab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
