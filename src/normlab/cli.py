"""The ``normlab`` command line: explain, norms, compare (the lab), audit, convert, advise."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__


def _explain(args: argparse.Namespace) -> int:
    from .explain import draw_cube, explain

    explanation = explain(args.name, args.shape, num_groups=args.num_groups,
                          virtual_batch_size=args.virtual_batch_size, normalized_dims=args.normalized_dims)
    print(explanation.text())
    if args.figure:
        print(f"figure: {draw_cube(explanation, args.figure)}")
    return 0


def _list_norms(args: argparse.Namespace) -> int:
    from .registry import METHODS, methods_table

    if args.markdown:
        print(methods_table(), end="")
        return 0
    for method in sorted(METHODS, key=lambda m: m.name):
        aliases = f" (also {', '.join(method.aliases)})" if method.aliases else ""
        print(f"{method.name:12s} {method.title}: {method.summary}{aliases}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import os

    from .lab import OUTCOME_ORDER, STUDIES, Options, compare, study_variants
    from .lab.report import outcome_counts
    from .registry import canonical_name

    if args.list:
        for name, study in STUDIES.items():
            print(f"{name:18s} {study.claim}\n{'':18s} ({study.source})")
        return 0
    norms = None
    if args.norms:
        variants = study_variants()
        norms = tuple(n if n in variants else canonical_name(n) for n in args.norms.split(","))
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.pack < 1:
        raise ValueError(f"--pack must be at least 1, got {args.pack}")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be at least 0, got {args.first_seed}")
    if not args.budget > 0:
        raise ValueError(f"--budget must be a positive factor, got {args.budget}")
    options = Options(norms=norms, seeds=args.seeds, full=args.full, device=args.device, data=args.data,
                      nproc=args.nproc, first_seed=args.first_seed, budget=args.budget)  # fmt: skip
    index, results, ok = compare(args.out, args.study, options, workers=workers, fresh=args.fresh,
                                 progress=not args.no_progress, against=args.against, max_pack=args.pack)  # fmt: skip
    width = max(len(n) for n in results) + 2
    print("\n" + "study".ljust(width) + "  ".join(o.value for o in OUTCOME_ORDER))
    for name, result in results.items():
        counts = outcome_counts(result.verdicts)
        print(name.ljust(width) + "  ".join(str(counts[o]).center(len(o.value)) for o in OUTCOME_ORDER))
    print(f"\nreport: {index.resolve()}")
    return 0 if ok else 1


def _load_model(spec: str):
    """``MODULE:FACTORY`` (``torchvision.models:resnet18``) or ``path/to/file.py:FACTORY`` -> ``FACTORY()``."""
    import importlib
    import importlib.util
    from pathlib import Path

    module_name, sep, factory = spec.rpartition(":")
    if not sep or not module_name or not factory:
        raise ValueError(f"model must be MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"model file {module_name} does not exist")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as err:  # an import can fail in any way (ImportError, a RuntimeError in an extension...)
        raise ValueError(f"cannot import {module_name}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no callable {factory}")
    import torch

    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _audit(args: argparse.Namespace) -> int:
    import torch

    from .auditor import audit, format_findings
    from .explain import parse_shape

    shape = parse_shape(args.input_shape)
    model = _load_model(args.model)
    model.train(not args.eval)
    findings = audit(model, torch.randn(shape), batch_size=args.batch_size)
    print(format_findings(findings, as_json=args.json))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .transform import fold_batchnorm, freeze_batchnorm, swap

    out = Path(args.out)
    if out.is_dir() or not out.parent.exists():
        raise ValueError(f"--out {args.out}: expected a file path in an existing directory")
    model = _load_model(args.model)
    for item in args.swap or []:
        source, sep, target = item.partition("=")
        if not sep:
            raise ValueError(f"--swap must be SOURCE=TARGET (batch=group), got {item!r}")
        model, report = swap(model, source, target)
        print(report)
    if args.freeze:
        model = freeze_batchnorm(model)
        print("froze every BatchNorm2d")
    if args.fold:
        model, report = fold_batchnorm(model.eval())
        print(report)
    torch.save(model.state_dict(), out)
    print(f"state_dict: {out.resolve()}")
    return 0


def _advise(args: argparse.Namespace) -> int:
    from .lab.advise import advise

    print(advise(args.arch, args.batch_size, args.distributed, args.report).text())
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
    p.add_argument("name", help="any name from `normlab norms` (batch, layer, instance, group, rms, ...; aliases bn, gn...)")
    p.add_argument("--shape", required=True, help="input shape N,C[,spatial...], e.g. 8,64,32,32")
    p.add_argument("--num-groups", "--groups", type=int, default=None, dest="num_groups",
                   help="num_groups of grouped methods (group, evonorm_s0, ws; default 32)")
    p.add_argument("--virtual-batch-size", type=int, default=None, help="Ghost BatchNorm's virtual batch (default 32)")
    p.add_argument(
        "--normalized-dims", type=int, default=None, help="LayerNorm/RMSNorm: trailing dims normalized (default: all but N)"
    )
    p.add_argument("--figure", metavar="PATH", help="save the cube figure (PNG or SVG) to PATH")
    p.set_defaults(func=_explain)

    p = sub.add_parser(
        "compare",
        help="re-test the claims about normalization on this machine and write an HTML report",
        description="Run the lab's studies (each a published claim about normalization), skipping runs already "
        "stored in OUT/results.sqlite, then write OUT/index.html with figures, tables and verdicts computed "
        "from the data, beside the published numbers.",
    )
    p.add_argument("--list", action="store_true", help="list the studies and their claims, then exit")
    p.add_argument("--study", action="append", metavar="NAME", help="run only this study (repeatable)")
    p.add_argument("--norms", help="comma-separated norm names (any from `normlab norms`) instead of each study's own")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per configuration (default: each study's, 5 for the classification studies; x2 with --full)")
    p.add_argument("--first-seed", type=int, default=0, metavar="N",
                   help="run seeds N, N+1, ... (default 0); two runs with disjoint seeds test the verdicts' stability")
    p.add_argument("--full", action="store_true", help="more seeds, steps and settings (much slower)")
    p.add_argument("--budget", type=float, default=1.0, metavar="FACTOR",
                   help="every run's training steps times FACTOR (default 1; below 1 a quick look whose models "
                   "likely do not train, and the report says so)")
    p.add_argument("--out", default="normlab-results", help="output directory (default: ./normlab-results)")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: up to 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where runs train (default cpu)")
    p.add_argument("--data", metavar="KIND:PATH", help="real images instead of the embedded data: cifar10:PATH or mnist:PATH")
    p.add_argument("--nproc", type=int, default=4, help="gloo ranks for the distributed study (default 4)")
    p.add_argument("--against", metavar="DIR",
                   help="another compare output (run with other seeds): the report lists the verdicts that changed")
    p.add_argument("--pack", type=int, default=16, metavar="K",
                   help="train up to K CNN runs together as one packed model (default 16; 1: every run alone)")
    p.add_argument("--fresh", action="store_true", help="discard stored results in OUT and rerun everything")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "audit", help="run a model once and report normalization problems, with evidence and fixes",
        description="Build MODEL, run it on a random input of --input-shape and report: conv/linear bias before BN, "
        "BN at batch size <= 4, statistics over a single value, LayerNorm through permutes, norms in fp16/bf16, "
        "Keras-style BN momentum, norms left in training mode.",
    )
    p.add_argument("model", metavar="MODULE:FACTORY", help="e.g. torchvision.models:resnet18 or my_model.py:build")
    p.add_argument("--input-shape", required=True, help="example input shape, e.g. 8,3,224,224")
    p.add_argument("--batch-size", type=int, default=None, help="the training batch size, if not the input's N")
    p.add_argument("--eval", action="store_true", help="audit the model in eval mode (default: training mode)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "convert", help="swap, freeze or fold a model's norms and save its state_dict",
        description="Build MODEL, apply --swap SOURCE=TARGET (every SOURCE norm becomes TARGET, e.g. batch=group), "
        "--freeze (BatchNorm2d -> FrozenBatchNorm2d) and --fold (eval BN folded into the conv before it), in that "
        "order, print what changed, and write the converted state_dict to --out.",
    )
    p.add_argument("model", metavar="MODULE:FACTORY", help="e.g. torchvision.models:resnet18 or my_model.py:build")
    p.add_argument("--swap", action="append", metavar="SOURCE=TARGET", help="e.g. batch=group (repeatable)")
    p.add_argument("--freeze", action="store_true", help="freeze every BatchNorm2d")
    p.add_argument("--fold", action="store_true", help="fold eval BatchNorm into the preceding conv/linear")
    p.add_argument("--out", required=True, metavar="FILE", help="where to save the state_dict (torch.save)")
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "advise", help="which normalization to use, with reasons and published numbers",
        description="Recommend a normalization for an architecture and per-device batch size, with the reasons, "
        "the published numbers, alternatives and, with --report, the verdicts of your own normlab compare run.",
    )
    p.add_argument("--arch", required=True, choices=["cnn", "transformer", "rnn", "mlp", "gan"])
    p.add_argument("--batch-size", type=int, required=True, help="examples per device")
    p.add_argument("--distributed", action="store_true", help="training on several devices")
    p.add_argument("--report", metavar="DIR", help="a normlab compare output directory")
    p.set_defaults(func=_advise)

    p = sub.add_parser("norms", help="list the registered normalization methods",
                       description="List create_norm's names with their aliases and what each does.")
    p.add_argument("--markdown", action="store_true", help="print the README's methods table instead")
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
