"""Model-steps per second: K lab ConvNets trained packed as one model vs one at a time (a benchmark, not a test).

    python benchmarks/packed_bench.py [--copies 16] [--steps 200] [--threads 1]

The lab's 4-block 1-d CNN (width 32) on MNIST-1D, SGD with momentum, one thread. Alone: torch.optim.SGD on one
net, the lab's own loop; packed: ``normlab.lab.packed``'s model and optimizer over K nets. Both are timed in the same
run, alternating, best of 3 rounds; prints the ratio.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from normlab.lab.config import make_config
from normlab.lab.packed import PackedSGD, pack_state
from normlab.lab.train import build_classifier, build_packed_classifier, classifier_data
from normlab.lab.config import from_dict


def _alone(config: dict, steps: int) -> float:
    c = from_dict(config)
    data = classifier_data(c)
    model = build_classifier(c, data)
    opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum)
    x, y = data.x_train[: c.batch_size], data.y_train[: c.batch_size]
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def _packed(config: dict, copies: int, steps: int) -> float:
    c = from_dict(config)
    data = classifier_data(c)
    singles = [build_classifier(c, data) for _ in range(copies)]
    packed = build_packed_classifier([c] * copies, data)
    layout = pack_state(singles, packed)
    opt = PackedSGD(packed, layout, [c.lr] * copies, [0.0] * copies, c.momentum)
    idx = torch.arange(copies * c.batch_size).view(c.batch_size, copies) % len(data.x_train)
    x, y = data.x_train[idx].reshape(c.batch_size, copies, 40), data.y_train[idx]
    start = time.perf_counter()
    for _ in range(steps):
        losses = F.cross_entropy(packed(x).transpose(1, 2), y, reduction="none").mean(0)
        opt.zero_grad()
        losses.sum().backward()
        opt.step(1.0)
    return copies * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), {args.copies} copies")
    print("| norm | batch | alone model-steps/s | packed model-steps/s | packed/alone |\n|---|---|---|---|---|")
    for norm in ("batch", "group", "layer"):
        for batch in (2, 32):
            config = make_config(study="bench", norm=norm, seed=0, batch_size=batch, lr=0.01, depth=4)
            alone = max(_alone(config, args.steps) for _ in range(3))
            packed = max(_packed(config, args.copies, args.steps // 4) for _ in range(3))
            print(f"| {norm} | {batch} | {alone:.0f} | {packed:.0f} | {packed / alone:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
