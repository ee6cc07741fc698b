"""Model-steps per second: K lab ConvNets trained packed as one model vs one at a time, today's packed form vs the
batched-matmul form, the pack-size curve, and the language model's tokens per second (a benchmark, not a test).

    python benchmarks/packed_bench.py [--copies 16] [--steps 40] [--rounds 3] [--threads 1] [--sweep] [--lm]
        [--mixed] [--baseline OTHER/src]

ConvNets: the lab's 4-block 1-d CNN (width 32) on MNIST-1D, SGD with momentum, one thread. Alone: torch.optim.SGD on
one net, the lab's own loop; packed: ``normlab.lab.training.packed``'s model and optimizer over K nets, in today's form
(grouped convolutions, ``packed_form="grouped"``: the code path of the main branch) and in the lab's choice
(``packed_form="auto"``: batched matrix products where measured faster), at K and at ``pack_size(batch)``, and
the lab's own step at K (``PackedTraining.step`` on K seeds: the fused step where it applies, the data order, the
loss and the optimizer as the lab trains), each against today's form in the same rounds.
``--sweep``: model-steps/s of both forms at pack sizes 4 to 64, batch 2 and 32. ``--lm``: the character-level
language model (2 blocks, width 64, 4 heads, sequences of 64 with padding), tokens per second with today's attention
(``nn.MultiheadAttention`` with a causal and a key padding mask, per-parameter AdamW and clipping: the issue's code),
the new one on the padded batch (what the lab trains a batch-dependent norm with: its attention, the head on
the real tokens only, fused AdamW, foreach clipping, as ``CharLMTraining``), and
``CharTransformer.forward_unpadded`` (the real tokens only, what the lab trains a per-token norm with; not for
batch-dependent norms), same model, same parameters, the same 32x64 positions counted a step in every column.

``--mixed``: a mixed-norm pack as the lab packs a study's norms at a small batch (``--norms`` x ``--seeds`` runs, one
pack, the form "auto" picks), model-steps/s of the lab's own step (``PackedTraining.step``: batch fetch, forward,
backward, optimizer) at ``--mixed-batches`` (1, 2, 8, 32), each version in a process of its own: this version's step
(the fused step, ``normlab.lab.training.fused_step``, where it applies), this version with autograd's step, and
with ``--baseline`` (the ``src`` folder of another version of the lab, e.g. ``git archive`` of the commit before a
change) that version's rate in the same rounds; the ratios this/autograd step and this/baseline.

Every variant of a row is timed in the same run, alternating, best of ``--rounds`` rounds; ratios are new / today.
``--clock process`` (the default) times the process's CPU time (``time.process_time``; one thread), which a machine
shared with other jobs distorts less than wall time (``--clock wall``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from normlab.lab.config import make_config
from normlab.lab.training.models import pack_size
from normlab.lab.training.packed import PackedSGD, PackedTraining, pack_state
from normlab.lab.training.train import _lm_batch, build_classifier, build_packed_classifier, classifier_data, load_text
from normlab.registry import get_method

CLOCK = time.process_time


def _alone(config: dict, steps: int):
    c = config
    data = classifier_data(c)
    model = build_classifier(c, data)
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum)
    x, y = data.x_train[: c.batch_size], data.y_train[: c.batch_size]

    def run() -> float:
        start = CLOCK()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps / (CLOCK() - start)

    return run


def _packed(config: dict, copies: int, steps: int, form: str):
    c = config
    data = classifier_data(c)
    singles = [build_classifier(c, data) for _ in range(copies)]
    packed = build_packed_classifier([c] * copies, data)
    packed.packed_form = form
    layout = pack_state(singles, packed)
    opt = PackedSGD(packed, layout, [c.lr] * copies, [0.0] * copies, c.momentum)
    idx = torch.arange(copies * c.batch_size).view(c.batch_size, copies) % len(data.x_train)
    x, y = data.x_train[idx].reshape(c.batch_size, copies, 40), data.y_train[idx]

    def run() -> float:
        start = CLOCK()
        for _ in range(steps):
            losses = F.cross_entropy(packed(x).transpose(1, 2), y, reduction="none").mean(0)
            opt.zero_grad()
            losses.sum().backward()
            opt.step(1.0)
        return copies * steps / (CLOCK() - start)

    run()  # warm-up (allocator, first-call costs)
    return run


def _lab_step(configs: list, steps: int, autograd: bool = False):
    """A round of ``steps`` of the lab's own step on one pack of ``configs`` (``PackedTraining.step``: batch fetch,
    forward, backward, optimizer; the fused step where it applies), returning model-steps/s; ``autograd``: with the
    fused step's plan refused (autograd's step; versions before the fused step take it anyway)."""
    data = classifier_data(configs[0])
    singles = [build_classifier(c, data) for c in configs]
    packed = build_packed_classifier(configs, data)
    training = PackedTraining(configs, data, packed, pack_state(singles, packed))
    if autograd and hasattr(training, "_fused_plan"):
        training._fused_plan = lambda x: None  # type: ignore[method-assign]
    live = list(range(len(configs)))
    for step in range(5):  # warm-up (allocator, first-call costs)
        training.step(step, live, False)

    def run() -> float:
        start = CLOCK()
        for step in range(steps):
            training.step(step, live, False)
        return len(configs) * steps / (CLOCK() - start)

    return run


def _mixed_rate(norms: list[str], batch: int, seeds: int, steps: int, autograd: bool = False) -> float:
    """Model-steps/s of the lab's step (:func:`_lab_step`) on one pack of ``norms`` x ``seeds`` runs (a study's
    mixed-norm pack)."""
    configs = [
        make_config(study="bench", norm=n, seed=s, batch_size=batch, lr=0.01, depth=4)
        for n in norms
        for s in range(seeds)
    ]
    return _lab_step(configs, steps, autograd)()


def _mixed_in(
    src: Path, norms: str, batch: int, seeds: int, steps: int, threads: int, clock: str, autograd: bool = False
) -> float:
    """:func:`_mixed_rate` in a process running the lab from ``src``."""
    command = [sys.executable, __file__, "--mixed-worker", "--norms", norms, "--batch", str(batch)]
    command += ["--seeds", str(seeds), "--steps", str(steps), "--threads", str(threads), "--clock", clock]
    command += ["--autograd"] if autograd else []
    env = {**os.environ, "PYTHONPATH": str(src)}
    return float(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.split()[-1])


def _mixed_table(args: argparse.Namespace) -> None:
    """The mixed pack's model-steps/s at each of ``--mixed-batches``: this version's step (the fused step where it
    applies), this version with autograd's step, and ``--baseline``'s, alternating within each round."""
    this = Path(__file__).resolve().parents[1] / "src"
    variants = {"this": (this, False), "this, autograd step": (this, True)}
    if args.baseline:
        variants["baseline"] = (Path(args.baseline).resolve(), False)
    k = len(args.norms.split(",")) * args.seeds
    print(
        f"\n| mixed pack ({args.norms} x {args.seeds} seeds, K={k}) | batch | "
        + " | ".join(f"{name} model-steps/s" for name in variants)
        + " | this/autograd step |"
        + (" this/baseline |" if args.baseline else "")
        + "\n|---|---|---|---|---|"
        + ("---|---|" if args.baseline else "")
    )
    for batch in [int(b) for b in args.mixed_batches.split(",")]:
        best = {name: 0.0 for name in variants}
        for _ in range(args.rounds):
            for name, (src, autograd) in variants.items():
                rate = _mixed_in(src, args.norms, batch, args.seeds, args.steps * 4, args.threads, args.clock, autograd)
                best[name] = max(best[name], rate)
        ratios = f" | {best['this'] / best['this, autograd step']:.2f}x"
        ratios += f" | {best['this'] / best['baseline']:.2f}x" if args.baseline else ""
        print(f"| mixed | {batch} | " + " | ".join(f"{r:.0f}" for r in best.values()) + ratios + " |", flush=True)


def _best(runs: dict[str, object], rounds: int) -> dict[str, float]:
    """Each variant's best rate over ``rounds`` rounds, the variants alternating within a round."""
    best = {name: 0.0 for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())  # type: ignore[operator]
    return best


def _lm(norm: str, batch: int, steps: int, forward: str):
    from normlab.lab.training.transformer import CharTransformer  # here: --mixed-worker runs older versions too

    c = make_config("char_lm", study="bench", norm=norm, seed=0, batch_size=batch)
    text = load_text()
    vocab = len(text.vocab)
    torch.manual_seed(0)
    model = CharTransformer(vocab, norm, c.dim, c.layers, max_len=c.seq_len)
    today = forward == "today"  # the code: per-parameter AdamW and clipping; else CharLMTraining's step
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.0, fused=not today)
    g = torch.Generator().manual_seed(0)
    batches = [_lm_batch(text.train, batch, c.seq_len, vocab, g, True) for _ in range(4)]

    def run() -> float:
        start = CLOCK()
        for i in range(steps):
            tokens, targets, padding = batches[i % len(batches)]
            if forward == "unpadded":  # the real positions only (their mean loss: the same as the padded one's)
                loss = F.cross_entropy(model.forward_unpadded(tokens, padding), targets[~padding])
            elif today:
                loss = F.cross_entropy(model.forward_multihead(tokens, padding).transpose(1, 2), targets)
            else:  # the padded batch, the head on the real tokens only (what the lab trains BatchNorm with)
                loss = F.cross_entropy(model(tokens, padding, real_only=True), targets[~padding])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=not today)
            opt.step()
        return batch * c.seq_len * steps / (CLOCK() - start)

    run()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="packed steps a round (alone: 4x as many)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--norms", default="batch,group,layer")
    parser.add_argument("--sweep", action="store_true", help="the pack-size curve, K = 4 .. 64")
    parser.add_argument("--lm", action="store_true", help="the language model's tokens per second")
    parser.add_argument("--no-convnet", action="store_true", help="skip the ConvNet table")
    parser.add_argument("--clock", choices=("process", "wall"), default="process")
    parser.add_argument("--mixed", action="store_true", help="a mixed pack's model-steps/s: fused vs autograd step")
    parser.add_argument("--seeds", type=int, default=5, help="runs per norm in the mixed pack")
    parser.add_argument("--baseline", help="another version's src folder, timed in the mixed pack's rounds")
    parser.add_argument("--mixed-batches", default="1,2,8,32", help="the batches of the mixed pack's table")
    parser.add_argument("--mixed-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--autograd", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    torch.set_num_threads(args.threads)
    if args.mixed_worker:  # one version's rate, in its own process (see _mixed_in)
        print(_mixed_rate(args.norms.split(","), args.batch, args.seeds, args.steps, args.autograd))
        return
    norms = args.norms.split(",")
    print(
        f"# {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), {args.copies} copies, "
        f"{args.clock} time, best of {args.rounds}"
    )
    if not args.no_convnet:
        print(
            f"\n| norm | batch | alone model-steps/s | packed today (grouped, K={args.copies}) | packed new (auto, "
            f"K={args.copies}) | new form | new/today | packed new (auto, K=pack_size) | K | sized/today | the lab's "
            f"step (K={args.copies}) | lab step/today |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for norm in norms:
            for batch in (2, 32):
                config = make_config(study="bench", norm=norm, seed=0, batch_size=batch, lr=0.01, depth=4)
                today = _packed(config, args.copies, args.steps, "grouped")
                new = _packed(config, args.copies, args.steps, "auto")
                c = config
                uses_matmul = build_packed_classifier([c] * args.copies, classifier_data(c)).uses_matmul(batch)
                form = "matmul" if uses_matmul else "grouped"
                k = pack_size(batch)
                sized = _packed(config, k, max(2, args.steps * args.copies // k), "auto")
                seeds = [dataclasses.replace(config, seed=seed) for seed in range(args.copies)]
                lab = _lab_step(seeds, args.steps)
                variants = {"alone": _alone(config, 4 * args.steps), "today": today, "new": new, "sized": sized}
                r = _best({**variants, "lab": lab}, args.rounds)
                print(
                    f"| {norm} | {batch} | {r['alone']:.0f} | {r['today']:.0f} | {r['new']:.0f} | {form} | "
                    f"{r['new'] / r['today']:.2f}x | {r['sized']:.0f} | {k} | {r['sized'] / r['today']:.2f}x | "
                    f"{r['lab']:.0f} | {r['lab'] / r['today']:.2f}x |",
                    flush=True,
                )
    if args.sweep:
        sizes = (4, 8, 16, 32, 64)
        print(
            "\n| norm | batch | form | "
            + " | ".join(f"K={k}" for k in sizes)
            + " |\n|---|---|---|"
            + "---|" * len(sizes)
        )
        for norm in norms:
            for batch in (2, 32):
                config = make_config(study="bench", norm=norm, seed=0, batch_size=batch, lr=0.01, depth=4)
                for form in ("grouped", "matmul"):
                    rates = []
                    for k in sizes:
                        steps = max(4, args.steps * 16 // k)
                        rates.append(_best({form: _packed(config, k, steps, form)}, args.rounds)[form])
                    print(f"| {norm} | {batch} | {form} | " + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)
    if args.mixed:
        _mixed_table(args)
    if args.lm:
        print(
            "\n| LM norm | batch | today tokens/s (MultiheadAttention) | new tokens/s | new/today | unpadded tokens/s "
            "| unpadded/today |\n|---|---|---|---|---|---|---|"
        )
        for norm in ("layer", "rms", "dyt", "batch"):
            steps = max(2, args.steps // 4)
            runs = {"today": _lm(norm, 32, steps, "today"), "new": _lm(norm, 32, steps, "new")}
            if not get_method(norm).is_batch_dependent:  # BatchNorm's statistics would change without the padding
                runs["unpadded"] = _lm(norm, 32, steps, "unpadded")
            r = _best(runs, args.rounds)
            unpadded = f"{r['unpadded']:.0f} | {r['unpadded'] / r['today']:.2f}x" if "unpadded" in r else "- | -"
            print(
                f"| {norm} | 32 | {r['today']:.0f} | {r['new']:.0f} | {r['new'] / r['today']:.2f}x | {unpadded} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
