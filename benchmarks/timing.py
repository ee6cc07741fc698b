"""The one timing loop the forward + backward benchmarks share."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def forward_backward_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int,
                             before_each: Callable[[], None] | None = None) -> float:  # fmt: skip
    """Median seconds of ``module(x).sum().backward()`` over ``repeats`` calls, after 3 warm-up calls.
    ``before_each`` runs untimed before every call (a barrier across ranks, say)."""
    times = []
    for _ in range(repeats + 3):
        xi = x.detach().requires_grad_(True)
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        module(xi).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])
