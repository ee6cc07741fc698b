"""The one timing loop the forward + backward benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def forward_backward_seconds(
    module: torch.nn.Module,
    x: torch.Tensor,
    repeats: int,
    before_each: Callable[[], None] | None = None,
    grad: torch.Tensor | None = None,
) -> float:
    """Median seconds of ``module(x).backward(grad)`` over ``repeats`` calls, after 3 warm-up calls.
    ``grad`` is the upstream gradient (a tensor of the output's shape, in the layout the caller wants); None starts
    from ``.sum()`` (an expanded gradient, which is what ``module(x).sum().backward()`` hands the module).
    ``before_each`` runs untimed before every call (a barrier across ranks, say)."""
    times = []
    for _ in range(repeats + 3):
        xi = x.detach().requires_grad_(True)
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        if grad is None:
            module(xi).sum().backward()
        else:
            module(xi).backward(grad)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])
