"""The fused RMSNorm CPU kernel (``normlab/functional/csrc/rms_norm.cpp``, loaded by ``normlab.functional._kernels``)
and its pure-ATen fallback:

- the kernel, through ``normlab.functional.rms_norm``, against the float64 reference: output, input and weight
  gradients, random shapes (row lengths on and off the vector width), float32 / bfloat16 / float16 / float64, means
  0.5 and 1e4, with and without a weight, one and two threads; ``dw`` bit-identical between runs;
- the fallback (``NORMLAB_NO_KERNELS=1``) gives the same results within rounding;
- a failed compile (no compiler, a compiler error) warns once and falls back; concurrent first calls compile once.

The kernel tests skip when there is no C++ compiler. The first run compiles the kernel (tens of seconds); later runs
load it from torch's extension cache.
"""

import threading
import time
import warnings

import pytest
import torch
from helpers import assert_close, break_compile, num_threads, random_input, random_params
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import vs_reference, vs_torch

import normlab.functional as NF
from normlab import reference as R
from normlab.functional import _kernels

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _run(x, weight, dy, eps):
    """(y, dx, dw, the kernel module the forward used or None) of ``NF.rms_norm`` over the last dim."""
    x = x.detach().clone().requires_grad_(True)
    w = None if weight is None else weight.detach().clone().requires_grad_(True)
    y = NF.rms_norm(x, x.shape[-1], w, eps)
    used = y.grad_fn.kernel  # the autograd Function's ctx
    y.backward(dy)
    return y.detach(), x.grad, None if w is None else w.grad, used


def _check_against_reference(shape, dtype, affine, shift, seed, threads):
    size = shape[-1]
    x = random_input(shape, dtype, seed=seed, scale=2.0, shift=shift)
    dy = random_input(shape, dtype, seed=seed + 1)
    weight = random_params(size, dtype, seed=seed + 2)[0] if affine else None
    eps = 1e-6
    with num_threads(threads):
        y, dx, dw, used = _run(x, weight, dy, eps)
    assert used is not None, "the kernel was not used"
    assert y.dtype == dx.dtype == dtype and (dw is None or dw.dtype == dtype)
    w64 = None if weight is None else weight.double().numpy()
    y_ref, saved = R.rms_norm(x.double().numpy(), (size,), w64, eps)
    dx_ref, dw_ref, _ = R.backward(dy.double().numpy(), saved)
    tol, gtol = vs_reference(dtype), vs_reference(dtype, grad=True)
    # errors against the size of what is computed: the output's largest value; for dx, rstd * |dy * w|, the terms
    # that cancel (at mean 1e4, or one value per row, dx is much smaller than them)
    g = dy.double().abs() * (1.0 if weight is None else weight.double().abs())
    rstd = float(saved.rstd.max())
    assert_close(y, y_ref, atol=tol["atol"] * max(1.0, float(abs(y_ref).max())), rtol=tol["rtol"], msg="output")
    assert_close(dx, dx_ref, atol=gtol["atol"] * rstd * float(g.max()), rtol=gtol["rtol"], msg="input grad")
    if affine:
        scale = max(1.0, float(abs(dw_ref).max()))
        assert_close(dw, dw_ref, atol=gtol["atol"] * scale * 4, rtol=gtol["rtol"], msg="weight grad")


@pytest.mark.usefixtures("rms_norm_kernel")
@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 6), min_size=1, max_size=2),
    size=st.sampled_from([1, 3, 16, 17, 64, 100, 300, 768]),
    dtype=st.sampled_from(DTYPES),
    affine=st.booleans(),
    shift=st.sampled_from([0.5, 1e4]),
    seed=st.integers(0, 10_000),
    threads=st.sampled_from([1, 2]),
)
def test_kernel_matches_the_reference(lead, size, dtype, affine, shift, seed, threads):
    _check_against_reference((*lead, size), dtype, affine, shift, seed, threads)


@pytest.mark.usefixtures("rms_norm_kernel")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_the_reference_at_benchmark_shapes(dtype, threads):
    """Many rows, split into blocks over threads (the per-thread ``dw`` sums), mean 1e4."""
    _check_against_reference((64, 32, 768), dtype, True, 1e4, 3, threads)
    _check_against_reference((32, 64, 64), dtype, True, 0.5, 4, threads)


@pytest.mark.usefixtures("rms_norm_kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_weight_gradient_is_deterministic_for_a_thread_count(dtype):
    x, dy = random_input((8, 64, 256), dtype, seed=5), random_input((8, 64, 256), dtype, seed=6)
    weight = random_params(256, dtype, seed=7)[0]
    with num_threads(2):
        runs = [_run(x, weight, dy, 1e-6) for _ in range(3)]
    for y, dx, dw, _ in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(dx, runs[0][1]) and torch.equal(dw, runs[0][2])


@pytest.mark.usefixtures("rms_norm_kernel")
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fallback_gives_the_same_results(dtype, affine, monkeypatch):
    x = random_input((5, 7, 96), dtype, seed=8, scale=2.0, shift=0.5)
    dy = random_input((5, 7, 96), dtype, seed=9)
    weight = random_params(96, dtype, seed=10)[0] if affine else None
    y, dx, dw, used = _run(x, weight, dy, None)
    assert used is not None
    monkeypatch.setenv(_kernels.DISABLE_ENV, "1")
    assert _kernels.rms_norm_kernel() is None
    y0, dx0, dw0, used0 = _run(x, weight, dy, None)
    assert used0 is None
    tol, gtol = vs_torch(dtype), vs_torch(dtype, grad=True)
    assert_close(y, y0, **tol, msg="output")
    assert_close(dx, dx0, atol=gtol["atol"] * float(dx0.abs().max()), rtol=gtol["rtol"], msg="input grad")
    if affine:
        assert_close(dw, dw0, atol=gtol["atol"] * float(dw0.abs().max()), rtol=gtol["rtol"], msg="weight grad")


@pytest.mark.usefixtures("rms_norm_kernel")
def test_kernel_takes_an_expanded_upstream_gradient():
    """``.sum().backward()`` hands the Function an expanded (stride 0) gradient."""
    x = random_input((4, 50), torch.float32, seed=11).requires_grad_(True)
    w = random_params(50, seed=12)[0].requires_grad_(True)
    NF.rms_norm(x, 50, w).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    torch.nn.functional.rms_norm(x2, (50,), w2).sum().backward()
    assert_close(x.grad, x2.grad, **vs_torch(torch.float32, grad=True))
    assert_close(w.grad, w2.grad, **vs_torch(torch.float32, grad=True))


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as in a new process (nothing compiled, nothing failed); restored afterwards."""
    monkeypatch.delenv(_kernels.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_kernels.RMS_NORM, "loaded", None)
    monkeypatch.setattr(_kernels.RMS_NORM, "failed", None)
    return monkeypatch


def _compare_with_composite(dtype=torch.float32):
    x = random_input((3, 10), dtype, seed=13).requires_grad_(True)
    y = NF.rms_norm(x, 10)
    assert y.grad_fn.kernel is None
    assert_close(y, torch.nn.functional.rms_norm(x.detach(), (10,)), **vs_torch(dtype))
    y.sum().backward()
    assert x.grad is not None


def test_a_failed_compile_warns_once_and_falls_back(monkeypatch):
    calls = break_compile(monkeypatch, _kernels.RMS_NORM, "rms_norm.cpp")
    with pytest.warns(RuntimeWarning, match=r"could not be compiled \(RuntimeError: rms_norm.cpp:1:1: error: it br"):
        _compare_with_composite()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        _compare_with_composite(torch.bfloat16)
    assert calls == [1]


def test_no_compiler_warns_and_falls_back(fresh_loader, tmp_path):
    fresh_loader.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing cached: a build would be needed
    fresh_loader.setattr(_kernels.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*pure-ATen path"):
        _compare_with_composite()


def test_a_cached_build_loads_without_a_compiler_from_any_copy_of_the_source(fresh_loader, tmp_path):
    """The build is named by the source's content: another checkout (here a copy of the source elsewhere) loads
    the cached build, and needs no compiler for it."""
    if _kernels.rms_norm_kernel() is None:
        pytest.skip("no kernel build on this machine")
    fresh_loader.setattr(_kernels.RMS_NORM, "loaded", None)
    copy = tmp_path / "csrc" / "rms_norm.cpp"
    copy.parent.mkdir()
    for name in (copy.name, *_kernels.RMS_NORM_EXTRA):  # the source and the header it includes
        (copy.parent / name).write_bytes(_kernels.SOURCE.with_name(name).read_bytes())
    fresh_loader.setattr(_kernels.RMS_NORM, "source", copy)
    fresh_loader.setattr(_kernels.shutil, "which", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _kernels.rms_norm_kernel() is not None


def test_disabled_kernels_do_not_compile(fresh_loader):
    fresh_loader.setenv(_kernels.DISABLE_ENV, "1")
    fresh_loader.setattr(_kernels, "_compile", lambda *args: pytest.fail("compiled although disabled"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compare_with_composite()


def test_concurrent_first_calls_compile_once(fresh_loader):
    calls, fake = [], object()

    def slow(*args):
        calls.append(1)
        time.sleep(0.2)
        return fake

    fresh_loader.setattr(_kernels, "_compile", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(_kernels.rms_norm_kernel())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(results) == 4 and all(r is fake for r in results)


@pytest.mark.usefixtures("rms_norm_kernel")
@pytest.mark.parametrize("affine", [True, False])
def test_kernel_gradcheck_with_batched_gradients(affine):
    """gradcheck's batched-gradient check runs the backward under vmap: the Function takes ATen's path there."""
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    params = ((torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_(True),) if affine else ()

    def f(x, *p):
        y = NF.rms_norm(x, 6, *p)
        assert y.grad_fn.kernel is not None
        return y

    assert torch.autograd.gradcheck(f, (x, *params), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, *params))
