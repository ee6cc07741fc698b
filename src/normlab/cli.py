"""The ``normlab`` command line: explain, norms, compare (the lab), audit, convert, advise."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:  # the commands import torch and the lab when they run
    from pathlib import Path

    from torch.nn import Module

    from .lab import Execution
    from .lab.judging.study import StudyResult
    from .lab.sweep.executors import RaySettings


def _explain(args: argparse.Namespace) -> int:
    from .explain import draw_cube, explain

    explanation = explain(
        args.name,
        args.shape,
        num_groups=args.num_groups,
        virtual_batch_size=args.virtual_batch_size,
        normalized_dims=args.normalized_dims,
    )
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

    from .lab import OUTCOME_ORDER, STUDIES, Execution, Options, compare, study_variants
    from .lab.judging.report import outcome_counts
    from .lab.sweep.runner import default_workers
    from .registry import canonical_name

    if args.list:
        for name, study in STUDIES.items():
            print(f"{name:18s} {study.claim}\n{'':18s} ({study.source})")
        return 0
    user_only = [
        flag
        for flag, value in (
            ("--batch-sizes", args.batch_sizes),
            ("--model-args", args.model_args),
            ("--epochs", args.epochs),
            ("--steps", args.steps),
            ("--lr", args.lr),
        )
        if value is not None
    ]
    if user_only and not args.model:
        raise ValueError(f"{', '.join(user_only)}: only with --model (your own model's study)")
    norms = None
    if args.norms:
        variants = study_variants()
        norms = tuple(n if n in variants else canonical_name(n) for n in args.norms.split(","))
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    _check_device(args.device)
    workers = args.workers if args.workers is not None else default_workers()  # one per core, memory allowing
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
    if not args.checkpoint_every >= 0:
        raise ValueError(f"--checkpoint-every must be 0 (never) or a number of seconds, got {args.checkpoint_every}")
    execution = Execution(
        workers=workers,
        max_pack=args.pack,
        executor=args.executor,
        ray=_ray_settings(args),
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    if args.model:
        index, results, ok = _compare_model(args, execution)
    else:
        options = Options(
            norms=norms,
            seeds=args.seeds,
            full=args.full,
            device=args.device,
            data=args.data,
            nproc=args.nproc,
            first_seed=args.first_seed,
            budget=args.budget,
        )
        index, results, ok = compare(
            args.out, args.study, options, fresh=args.fresh, against=args.against, execution=execution
        )
    width = max(len(n) for n in results) + 2
    print("\n" + "study".ljust(width) + "  ".join(o.value for o in OUTCOME_ORDER))
    for name, result in results.items():
        counts = outcome_counts(result.verdicts)
        print(name.ljust(width) + "  ".join(str(counts[o]).center(len(o.value)) for o in OUTCOME_ORDER))
    for result in results.values():
        for line in result.recommendations:
            print(f"recommended at {line}")
    print(f"\nreport: {index.resolve()}")
    return 0 if ok else 1


def _check_device(device: str) -> None:
    import torch

    try:
        where = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if where.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if where.type == "cuda" and (not torch.cuda.is_available() or (where.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {device}: no such CUDA device is available")


def _ray_settings(args: argparse.Namespace) -> RaySettings | None:
    if args.executor != "ray":
        for flag, value in (
            ("--ray-address", args.ray_address),
            ("--cpus-per-run", args.cpus_per_run),
            ("--gpus-per-run", args.gpus_per_run),
        ):
            if value is not None:
                raise ValueError(f"{flag}: only with --executor ray")
        return None
    from .lab.sweep.executors import RaySettings

    cpus = 1.0 if args.cpus_per_run is None else args.cpus_per_run
    gpus = 0.0 if args.gpus_per_run is None else args.gpus_per_run
    if not cpus > 0 or gpus < 0:
        raise ValueError(f"--cpus-per-run must be positive and --gpus-per-run at least 0, got {cpus} and {gpus}")
    return RaySettings(address=args.ray_address, cpus_per_run=cpus, gpus_per_run=gpus)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers (e.g. 4,32), got {text!r}") from None


def _compare_model(args: argparse.Namespace, execution: Execution) -> tuple[Path, dict[str, StudyResult], bool]:
    from .lab import Options, UserSpec, compare_model
    from .lab.training.inputs import parse_model_args

    missing = [
        flag
        for flag, value in (("--data", args.data), ("--norms", args.norms), ("--batch-sizes", args.batch_sizes))
        if not value
    ]
    if missing:
        raise ValueError(
            f"--model needs {', '.join(missing)} (e.g. --data cifar10:DIR --norms batch,group --batch-sizes 4,32)"
        )
    if args.study or args.full or args.against:
        raise ValueError("--study, --full and --against are for the built-in studies, not with --model")
    spec = UserSpec(
        model=args.model,
        data=args.data,
        norms=tuple(args.norms.split(",")),
        batch_sizes=_int_list(args.batch_sizes, "--batch-sizes"),
        model_args=parse_model_args(args.model_args),
        epochs=args.epochs or 1,
        steps=args.steps,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        amp=args.amp,
        channels_last=args.channels_last,
        loader_workers=args.loader_workers,
    )
    if args.epochs is not None and args.steps is not None:
        raise ValueError("--epochs and --steps: give one of them")
    options = Options(seeds=args.seeds, device=args.device, first_seed=args.first_seed, budget=args.budget)
    return compare_model(spec, args.out, options, execution, fresh=args.fresh)


def _load_model(spec: str) -> Module:
    """``MODULE:FACTORY`` (``torchvision.models:resnet18``), ``FILE.py:FACTORY``, ``torchvision:NAME`` or
    ``timm:NAME`` -> the model it builds (:func:`normlab.lab.training.inputs.load_model`)."""
    from .lab.training.inputs import load_model

    return load_model(spec, option="model")


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
        model, swapped = swap(model, source, target)
        print(swapped)
    if args.freeze:
        model = freeze_batchnorm(model)
        print("froze every BatchNorm2d")
    if args.fold:
        model, folded = fold_batchnorm(model.eval())
        print(folded)
    torch.save(model.state_dict(), out)
    print(f"state_dict: {out.resolve()}")
    return 0


def _advise(args: argparse.Namespace) -> int:
    from .lab.user_study.advise import advise

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
    p.add_argument(
        "name", help="any name from `normlab norms` (batch, layer, instance, group, rms, ...; aliases bn, gn...)"
    )
    p.add_argument("--shape", required=True, help="input shape N,C[,spatial...], e.g. 8,64,32,32")
    p.add_argument(
        "--num-groups",
        "--groups",
        type=int,
        default=None,
        dest="num_groups",
        help="num_groups of grouped methods (group, evonorm_s0, ws; default 32)",
    )
    p.add_argument("--virtual-batch-size", type=int, default=None, help="Ghost BatchNorm's virtual batch (default 32)")
    p.add_argument(
        "--normalized-dims",
        type=int,
        default=None,
        help="LayerNorm/RMSNorm: trailing dims normalized (default: all but N)",
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
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per configuration (default: each study's, 5 for the classification studies; x2 with --full)",
    )
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        metavar="N",
        help="run seeds N, N+1, ... (default 0); two runs with disjoint seeds test the verdicts' stability",
    )
    p.add_argument("--full", action="store_true", help="more seeds, steps and settings (much slower)")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="every run's training steps times FACTOR (default 1; below 1 a quick look whose models "
        "likely do not train, and the report says so)",
    )
    p.add_argument("--out", default="normlab-results", help="output directory (default: ./normlab-results)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel worker processes (default: one per core this process may run on, at most one per "
        "1.5 GB of available memory: normlab.lab.sweep.runner.default_workers)",
    )
    p.add_argument("--device", default="cpu", help="where runs train: cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--data",
        metavar="KIND:PATH",
        help="built-in studies: real images instead of the embedded data, cifar10:PATH or mnist:PATH; with "
        "--model: your data, cifar10:DIR, mnist:DIR, imagefolder:DIR (DIR/train, DIR/test) or FILE.py:FN "
        "returning (train_dataset, test_dataset[, loss_fn])",
    )
    p.add_argument("--nproc", type=int, default=4, help="gloo ranks for the distributed study (default 4)")
    p.add_argument(
        "--against",
        metavar="DIR",
        help="another compare output (run with other seeds): the report lists the verdicts that changed",
    )
    p.add_argument(
        "--pack",
        type=int,
        default=64,
        metavar="K",
        help="train up to K CNN runs together as one packed model (default 64; below that, packs are "
        "sized by batch as measured: 256 examples a step, at least 4 runs; 1: every run alone)",
    )
    p.add_argument("--fresh", action="store_true", help="discard stored results in OUT and rerun everything")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="each run saves its training state this often into OUT/checkpoints; a rerun after a crash or "
        "a kill resumes it (default 120; 0: never)",
    )
    mine = p.add_argument_group("your own model (normlab compare --model ...)")
    mine.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="your model: MODULE:FACTORY, FILE.py:FACTORY, torchvision:NAME or timm:NAME (random weights)",
    )
    mine.add_argument("--model-args", metavar="K=V,...", help="keyword arguments of the factory, e.g. num_classes=10")
    mine.add_argument("--batch-sizes", metavar="B,...", help="batch sizes to compare the methods at, e.g. 4,32")
    mine.add_argument("--epochs", type=int, default=None, help="epochs per run (default 1)")
    mine.add_argument("--steps", type=int, default=None, help="training steps per run, instead of --epochs")
    mine.add_argument(
        "--lr",
        type=float,
        default=None,
        help="centre of each setting's learning-rate grid (default 0.1 x B/32 for SGD, 1e-3 for AdamW)",
    )
    mine.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="default sgd (momentum 0.9)")
    mine.add_argument("--weight-decay", type=float, default=0.0, help="never applied to norm parameters or biases")
    mine.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    mine.add_argument("--channels-last", action="store_true", help="channels_last memory format for 4-d inputs")
    mine.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    ray = p.add_argument_group("where runs train")
    ray.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: worker processes here (default); ray: each run or pack a Ray task",
    )
    ray.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        default=None,
        help="an existing Ray cluster (default: start one on this machine)",
    )
    ray.add_argument("--cpus-per-run", type=float, default=None, help="Ray: CPUs per task (default 1)")
    ray.add_argument("--gpus-per-run", type=float, default=None, help="Ray: GPUs per task (default 0)")
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "audit",
        help="run a model once and report normalization problems, with evidence and fixes",
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
        "convert",
        help="swap, freeze or fold a model's norms and save its state_dict",
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
        "advise",
        help="which normalization to use, with reasons and published numbers",
        description="Recommend a normalization for an architecture and per-device batch size, with the reasons, "
        "the published numbers, alternatives and, with --report, the verdicts of your own normlab compare run.",
    )
    p.add_argument("--arch", required=True, choices=["cnn", "transformer", "rnn", "mlp", "gan"])
    p.add_argument("--batch-size", type=int, required=True, help="examples per device")
    p.add_argument("--distributed", action="store_true", help="training on several devices")
    p.add_argument("--report", metavar="DIR", help="a normlab compare output directory")
    p.set_defaults(func=_advise)

    p = sub.add_parser(
        "norms",
        help="list the registered normalization methods",
        description="List create_norm's names with their aliases and what each does.",
    )
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
