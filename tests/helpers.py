"""Shared test helpers: comparisons in float64, random inputs (never zeros), a thread count for a block, a compiled
kernel or a compile that fails, the autograd nodes under a result."""

import contextlib
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from normlab.functional import _kernels


def assert_close(actual, expected, *, atol, rtol, msg=""):
    """Compare a torch tensor or array with an array, in float64, with a readable failure."""
    a = actual.detach().double().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    e = (
        expected.detach().double().cpu().numpy()
        if isinstance(expected, torch.Tensor)
        else np.asarray(expected, np.float64)
    )
    assert a.shape == e.shape, f"{msg} shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=msg)


@contextlib.contextmanager
def num_threads(n: int):
    """torch's intra-op thread count set to ``n`` for a block, restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def random_input(shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    """Fresh standard-normal values (times scale, plus shift) of ``shape``, rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def random_params(c, dtype=torch.float32, seed=1):
    """Non-trivial affine parameters: weight around 1, bias around 0, neither exactly."""
    g = torch.Generator().manual_seed(seed)
    w = 1.0 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(c, generator=g, dtype=torch.float64)
    return w.to(dtype), b.to(dtype)


def nchw_shapes(min_dims=3, max_dims=5, max_side=6, min_batch=1):
    """Hypothesis strategy for (N, C, *spatial) shapes."""
    return st.integers(min_dims, max_dims).flatmap(
        lambda nd: st.tuples(
            st.integers(min_batch, 5), st.integers(1, 8), *[st.integers(1, max_side) for _ in range(nd - 2)]
        )
    )


def randomize_parameters(module, seed=0, low=0.5, high=1.5):
    """Parameters drawn uniformly from [low, high): away from the trivial init (ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(low + (high - low) * torch.rand(p.shape, generator=g, dtype=p.dtype))
    return module


def gradcheck_module(module, x):
    """torch.autograd.gradcheck of ``module`` at ``x``, its running buffers reset before every evaluation so that
    gradcheck's repeated forwards see the same function."""
    state = {k: v.clone() for k, v in module.named_buffers()}

    def f(inp):
        with torch.no_grad():
            for name, buf in module.named_buffers():
                buf.copy_(state[name])
        return module(inp)

    return torch.autograd.gradcheck(f, (x,))


def numeric_grad(f, a, step):
    """Central finite differences of the scalar ``f()`` with respect to the array ``a`` (perturbed in place)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        orig = a[i]
        a[i] = orig + step
        plus = f()
        a[i] = orig - step
        minus = f()
        a[i] = orig
        grad[i] = (plus - minus) / (2 * step)
    return grad


# whether a C++ compiler is there to build normlab's kernels (the compiled-kernel tests skip without one)
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the kernel cannot be built")


def compiled(kernel):
    """``kernel``'s compiled module (a :class:`normlab.functional._kernels.Kernel`); the test skips where it cannot be
    built (no C++ compiler) or kernels are disabled (``NORMLAB_NO_KERNELS=1``), and fails where a compiler is there
    and the compile failed (the kernels are meant to build wherever a compiler is)."""
    if not HAS_COMPILER:
        pytest.skip(f"no C++ compiler: the {kernel.what} kernel cannot be built")
    if _kernels.kernels_disabled():
        pytest.skip(f"{_kernels.DISABLE_ENV}=1 is set")
    module = kernel.module()
    if module is None:
        pytest.fail(f"the {kernel.what} kernel did not compile: {kernel.failed}")
    return module


def break_compile(monkeypatch, kernel, source):
    """``kernel`` (a :class:`normlab.functional._kernels.Kernel`) as in a new process, kernels enabled, whose compile
    fails as a compiler error in ``source`` would; returns the list that gets one entry per compile tried."""
    monkeypatch.delenv(_kernels.DISABLE_ENV, raising=False)
    monkeypatch.setattr(kernel, "loaded", None)
    monkeypatch.setattr(kernel, "failed", None)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError(f"Error building extension 'x': [1/2] c++ ...\n{source}:1:1: error: it broke\n")

    monkeypatch.setattr(_kernels, "_compile", broken)
    return calls


def autograd_nodes(fn) -> set[str]:
    """The names of all autograd nodes under ``fn`` (a ``grad_fn``; every node visited once)."""
    names, seen, todo = set(), set(), [fn]
    while todo:
        node = todo.pop()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            names.add(type(node).__name__)
            todo.extend(f for f, _ in node.next_functions)
    return names
