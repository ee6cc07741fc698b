"""The CPU fast paths of issue 22 against the float64 reference and against torch.nn, on random shapes:

- channels_last training BatchNorm without the compiled kernel (``normlab.functional._aten_batch_norm``; the kernel
  is tested in test_channels_last_kernel.py), both ways it runs: block statistics combined in float64
  (``_ChannelsLastBatchNorm``, large inputs) and ATen's kernel on the input, shifted by a block mean when it is
  not centered (``_shifted_batch_norm``, small inputs); float32 / bfloat16 / float16 / float64, means up to 1e4, the
  upstream gradient in the output's layout, the layouts of the output and the input gradient, the running statistics;
- RMSNorm's autograd Function over fused ATen kernels (forward, input and weight gradients, gradcheck and
  gradgradcheck in float64);
- the twins' argument checks, which run once per input signature: a new signature is checked again.
"""

import contextlib
import os

import pytest
import torch
from helpers import assert_close, random_input, random_params
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from parity import clone_pair, compare_steps
from tolerances import LARGE_MEAN_RELATIVE, vs_reference

import normlab.functional as NF
import normlab.nn as nl
from normlab import reference as R
from normlab.functional import _aten_batch_norm as ABN
from normlab.functional import _kernels

FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
LOW = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def batch_norm_path(path: str):
    """Route channels_last training BatchNorm through one path whatever the size: "blocks" (the Function, with
    blocks of at most 4 rows, so that small inputs have several) or "shift" (with the compiled kernel, which small
    inputs take first, disabled: tests/nn/test_channels_last_kernel.py tests that)."""
    saved = ABN._SHIFT_BELOW, ABN._BLOCK_ROWS, os.environ.get(_kernels.DISABLE_ENV)
    ABN._SHIFT_BELOW, ABN._BLOCK_ROWS = (0, 4) if path == "blocks" else (1 << 62, saved[1])
    os.environ[_kernels.DISABLE_ENV] = "1"
    try:
        yield
    finally:
        ABN._SHIFT_BELOW, ABN._BLOCK_ROWS = saved[:2]
        if saved[2] is None:
            os.environ.pop(_kernels.DISABLE_ENV, None)
        else:
            os.environ[_kernels.DISABLE_ENV] = saved[2]


def _reference_step(module, x, dy):
    dims = x.dim()
    x64 = x.detach().double().numpy()
    w = None if module.weight is None else module.weight.detach().double().numpy()
    b = None if module.bias is None else module.bias.detach().double().numpy()
    y_ref, saved = R.batch_norm(x64, w, b, module.eps)
    assert dims >= 4
    return y_ref, R.backward(dy.double().numpy(), saved)


@settings(max_examples=60, deadline=None)
@given(
    path=st.sampled_from(["blocks", "shift"]),
    rank=st.sampled_from([4, 5]),
    n=st.integers(1, 4),
    c=st.integers(1, 6),
    side=st.integers(2, 5),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
    affine=st.booleans(),
    shift=st.sampled_from([0.0, 3.0, 10.0]),  # 10 std: the small-input path shifts, below 2 it does not
    seed=st.integers(0, 10_000),
)
def test_channels_last_batch_norm_matches_the_reference(path, rank, n, c, side, dtype, affine, shift, seed):
    shape = (n, c) + (side,) * (rank - 2)
    fmt = FORMATS[rank]
    module = (nl.BatchNorm2d if rank == 4 else nl.BatchNorm3d)(c, affine=affine, dtype=dtype)
    if affine:
        w, b = random_params(c, dtype, seed=seed + 1)
        with torch.no_grad():
            module.weight.copy_(w)
            module.bias.copy_(b)
    x = random_input(shape, dtype, seed=seed, scale=2.0, shift=shift).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    dy = random_input(shape, dtype, seed=seed + 2).contiguous(memory_format=fmt)
    rm = module.running_mean.double().numpy().copy()
    rv = module.running_var.double().numpy().copy()
    with batch_norm_path(path):
        y = module(x)
        y.backward(dy)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
    y_ref, (dx_ref, dw_ref, db_ref) = _reference_step(module, x, dy)
    tol, gtol = vs_reference(dtype), vs_reference(dtype, grad=True)
    scale = max(1.0, float(abs(y_ref).max()))
    assert_close(y, y_ref, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=f"{path} output")
    assert_close(
        x.grad,
        dx_ref,
        atol=gtol["atol"] * max(1.0, float(abs(dx_ref).max())),
        rtol=gtol["rtol"],
        msg=f"{path} input grad",
    )
    if affine:
        for name, got, ref in (("weight", module.weight.grad, dw_ref), ("bias", module.bias.grad, db_ref)):
            assert got.dtype == dtype
            assert_close(
                got,
                ref,
                atol=gtol["atol"] * max(1.0, float(abs(ref).max())) * 4,
                rtol=gtol["rtol"],
                msg=f"{path} {name} grad",
            )
    rm, rv = R.running_stats_update(rm, rv, x.detach().double().numpy(), module.momentum)
    stats_tol = vs_reference(dtype)
    assert_close(
        module.running_mean,
        rm,
        atol=stats_tol["atol"] * max(1.0, abs(shift)),
        rtol=stats_tol["rtol"],
        msg=f"{path} running_mean",
    )
    assert_close(module.running_var, rv, **stats_tol, msg=f"{path} running_var")


@pytest.mark.parametrize("path", ["blocks", "shift"])
@pytest.mark.parametrize("shape", [(16, 8, 12, 12), (4, 8, 5, 6, 7)])
def test_channels_last_batch_norm_is_exact_at_mean_1e4(path, shape):
    """fp32 at mean 1e4, std 1 (torch's own channels_last kernel misses the 2e-3 bar): output, gradients."""
    module = (nl.BatchNorm2d if len(shape) == 4 else nl.BatchNorm3d)(shape[1])
    w, b = random_params(shape[1], torch.float32, seed=5)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    fmt = FORMATS[len(shape)]
    x = random_input(shape, torch.float32, seed=11, shift=1e4).contiguous(memory_format=fmt).requires_grad_(True)
    dy = random_input(shape, torch.float32, seed=21).contiguous(memory_format=fmt)
    with batch_norm_path(path):
        y = module(x)
        y.backward(dy)
    y_ref, (dx_ref, dw_ref, db_ref) = _reference_step(module, x, dy)
    y_ref = torch.from_numpy(y_ref)
    relative = float((y.detach().double() - y_ref).abs().max() / y_ref.abs().max())
    assert relative < LARGE_MEAN_RELATIVE, f"{path}: output relative error {relative:.2e}"
    gtol = vs_reference(torch.float32, grad=True)
    for name, got, ref in (
        ("input", x.grad, dx_ref),
        ("weight", module.weight.grad, dw_ref),
        ("bias", module.bias.grad, db_ref),
    ):
        assert_close(got, ref, atol=gtol["atol"] * max(1.0, float(abs(ref).max())), rtol=gtol["rtol"], msg=name)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernel", "no kernel"])
def test_large_channels_last_batch_norm_matches_torch(kernels, monkeypatch):
    """A large input runs the compiled kernel, or without it (at the default thresholds) the block Function; both
    agree with torch's own channels_last kernel at a small mean (where that kernel is exact)."""
    if not kernels:
        monkeypatch.setenv(_kernels.DISABLE_ENV, "1")
    shape = (8, 16, 64, 64)  # 2**19 values: the block path without the kernel
    assert torch.Size(shape).numel() >= ABN._SHIFT_BELOW
    for dtype in (torch.float32, torch.bfloat16):
        theirs, ours = torch.nn.BatchNorm2d(16, dtype=dtype), nl.BatchNorm2d(16, dtype=dtype)
        clone_pair(theirs, ours, seed=3)
        x = random_input(shape, dtype, seed=1, shift=0.5).contiguous(memory_format=torch.channels_last)
        compare_steps(theirs, ours, [x], dtype, torch.channels_last)


@settings(max_examples=25, deadline=None)
@given(
    path=st.sampled_from(["blocks", "shift"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 10_000),
    momentum=st.sampled_from([0.1, None]),
)
def test_channels_last_batch_norm_matches_torch_over_steps(path, dtype, seed, momentum):
    theirs = torch.nn.BatchNorm2d(6, momentum=momentum, dtype=dtype)
    ours = nl.BatchNorm2d(6, momentum=momentum, dtype=dtype)
    clone_pair(theirs, ours, seed)
    xs = [
        random_input((4, 6, 5, 3), dtype, seed=seed + i, scale=1 + i, shift=0.5 * i).contiguous(
            memory_format=torch.channels_last
        )
        for i in range(3)
    ]
    with batch_norm_path(path):
        compare_steps(theirs, ours, xs, dtype, torch.channels_last)


@pytest.mark.parametrize("path", ["blocks", "shift"])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_batch_norm_second_derivatives(path, affine):
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    params = (
        (
            (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_(True),
            torch.randn(4, dtype=torch.float64, requires_grad=True),
        )
        if affine
        else ()
    )

    def f(x, *p):
        return NF.batch_norm(x, None, None, *p, training=True)

    with batch_norm_path(path):
        assert torch.autograd.gradcheck(f, (x, *params))
        assert torch.autograd.gradgradcheck(f, (x, *params))


@settings(max_examples=80, deadline=None)
@given(
    lead=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    normalized=st.sampled_from([(1,), (5,), (3, 4), (64,), (300,)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
    affine=st.booleans(),
    eps=st.sampled_from([None, 1e-6]),
    seed=st.integers(0, 10_000),
)
def test_rms_norm_matches_the_reference_and_torch(lead, normalized, dtype, affine, eps, seed):
    shape = tuple(lead) + normalized
    assume(len(normalized) > 1 or normalized[0] > 1 or dtype not in LOW)  # one value: dx ~ 0 from cancellation
    module = nl.RMSNorm(normalized, eps=eps, elementwise_affine=affine, dtype=dtype)
    if affine:
        with torch.no_grad():
            module.weight.copy_(random_params(module.weight.numel(), dtype, seed=seed)[0].view(normalized))
    x = random_input(shape, dtype, seed=seed, scale=2.0, shift=0.5).requires_grad_(True)
    dy = random_input(shape, dtype, seed=seed + 1)
    y = module(x)
    y.backward(dy)
    assert y.dtype == dtype and x.grad.dtype == dtype
    # the reference, with torch's eps=None: the epsilon of the statistics' dtype (float32 for fp16/bf16)
    ref_eps = eps if eps is not None else torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    w = module.weight.detach().double().numpy() if affine else None
    y_ref, saved = R.rms_norm(x.detach().double().numpy(), normalized, w, ref_eps)
    dx_ref, dw_ref, _ = R.backward(dy.double().numpy(), saved)
    tol, gtol = vs_reference(dtype), vs_reference(dtype, grad=True)
    assert_close(y, y_ref, atol=tol["atol"] * max(1.0, float(abs(y_ref).max())), rtol=tol["rtol"], msg="output")
    assert_close(
        x.grad, dx_ref, atol=gtol["atol"] * max(1.0, float(abs(dx_ref).max())), rtol=gtol["rtol"], msg="input grad"
    )
    if affine:
        assert_close(
            module.weight.grad,
            dw_ref,
            atol=gtol["atol"] * max(1.0, float(abs(dw_ref).max())) * 4,
            rtol=gtol["rtol"],
            msg="weight grad",
        )
    theirs = torch.nn.RMSNorm(normalized, eps=eps, elementwise_affine=affine, dtype=dtype)
    clone_pair(theirs, module, seed)
    module.zero_grad(set_to_none=True)
    compare_steps(theirs, module, [x.detach()], dtype)


@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_gradcheck_and_gradgradcheck(affine):
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    params = ((torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_(True),) if affine else ()

    def f(x, *p):
        return NF.rms_norm(x, 6, *p)

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize(
    "make, good, bad",
    [
        (lambda: nl.BatchNorm1d(4), (3, 4), (3, 5)),
        (lambda: nl.BatchNorm2d(4), (3, 4, 2, 2), (3, 4, 2)),
        (lambda: nl.GroupNorm(2, 4), (3, 4, 5), (3, 6, 5)),
        (lambda: nl.InstanceNorm2d(4, affine=True), (3, 4, 2, 2), (3, 5, 2, 2)),
        (lambda: nl.LayerNorm(4), (3, 4), (3, 5)),
        (lambda: nl.RMSNorm(4), (3, 4), (3, 5)),
    ],
)
def test_checks_run_again_when_the_input_signature_changes(make, good, bad):
    module = make()
    module(torch.randn(good))
    module(torch.randn(good))  # checked once, then skipped
    with pytest.raises(ValueError):
        module(torch.randn(bad))
    with pytest.raises(TypeError):
        module(torch.ones(good, dtype=torch.long))
    module.eps = -1.0  # a changed eps is part of the signature
    with pytest.raises(ValueError, match="eps"):
        module(torch.randn(good))


@settings(max_examples=30, deadline=None)
@given(
    rank=st.sampled_from([4, 5]),
    n=st.integers(1, 4),
    groups=st.integers(1, 3),
    per_group=st.integers(1, 3),
    side=st.integers(2, 5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    shift=st.sampled_from([0.0, 10.0, 1e4]),  # 10 and 1e4 std: shifted per (example, group); 0: ATen's kernel as is
    seed=st.integers(0, 10_000),
)
def test_channels_last_group_norm_matches_the_reference(rank, n, groups, per_group, side, dtype, shift, seed):
    """float32/float64 channels_last GroupNorm (ATen's channels_last kernel on the input shifted per (example, group)
    where it is not centered): output, input and parameter gradients against the float64 reference, in the input's
    layout."""
    c = groups * per_group
    assume(c > 1)  # one channel: channels_last is the contiguous layout
    # at mean 1e4 a group of a few values has a sample std far below 1: float32 then loses digits in any kernel
    assume(shift < 1e4 or dtype == torch.float64 or per_group * side ** (rank - 2) >= 16)
    shape, fmt = (n, c) + (side,) * (rank - 2), FORMATS[rank]
    module = nl.GroupNorm(groups, c, dtype=dtype)
    w, b = random_params(c, dtype, seed=seed + 1)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    x = random_input(shape, dtype, seed=seed, shift=shift).contiguous(memory_format=fmt).requires_grad_(True)
    dy = random_input(shape, dtype, seed=seed + 2).contiguous(memory_format=fmt)
    y = module(x)
    y.backward(dy)
    assert y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
    y_ref, saved = R.group_norm(x.detach().double().numpy(), groups, w.double().numpy(), b.double().numpy(), module.eps)
    dx_ref, dw_ref, db_ref = R.backward(dy.double().numpy(), saved)
    scale = max(1.0, float(abs(y_ref).max()))
    if shift < 1e4 or dtype == torch.float64:
        tol = vs_reference(dtype)
        assert_close(y, y_ref, atol=tol["atol"] * scale, rtol=tol["rtol"], msg="output")
    else:  # float32 at mean 1e4: the input itself carries 1e4 * 6e-8 of rounding
        relative = float((y.detach().double() - torch.from_numpy(y_ref)).abs().max()) / scale
        assert relative < LARGE_MEAN_RELATIVE, f"output relative error {relative:.2e}"
    gtol = vs_reference(dtype, grad=True)
    for name, got, ref in (
        ("input", x.grad, dx_ref),
        ("weight", module.weight.grad, dw_ref),
        ("bias", module.bias.grad, db_ref),
    ):
        assert_close(got, ref, atol=gtol["atol"] * max(1.0, float(abs(ref).max())), rtol=gtol["rtol"], msg=name)


def test_centered_channels_last_group_norm_runs_atens_own_kernel():
    """Centered float32 input skips the shift: the same numbers as torch's channels_last GroupNorm."""
    x = random_input((4, 8, 6, 6), torch.float32, seed=3).contiguous(memory_format=torch.channels_last)
    assert NF._group_shift(x, 4) is None and NF._group_shift(x + 1e4, 4) is not None
    theirs, ours = torch.nn.GroupNorm(4, 8), nl.GroupNorm(4, 8)
    clone_pair(theirs, ours, seed=3)
    compare_steps(theirs, ours, [x], torch.float32, torch.channels_last)
