"""The compiled channel-major norm kernel of the packed ConvNet's matmul form (``lab/training/csrc/channel_major.cpp``,
loaded by ``normlab.lab.training.channel_major_kernel``) against a float64 computation and against the ATen
composites it replaces (``channel_major_composites.GroupNormChannelMajor``, ``RowBatchNorm``), which stay as its
fallback:

- GroupNorm of (G, C/G * L, N) maps with the conv's bias, affine and (or not) the ReLU: the output and all four
  gradients, random shapes (batch widths on and off the vector width), means 0 and 1e4, one and two threads; every
  small batch (the kernel's path along a group's values); results equal on one and two threads;
- BatchNorm rows: output, gradients, the running statistics equal to the composite's; results equal on one and
  two threads at every small batch, in both layouts;
- every kernel's ``out`` (its output written into a given tensor, a mixed pack's slice) and its checks;
- the packed net's training step equal with the kernel and with ``NORMLAB_NO_KERNELS=1``; a failed compile warns
  once and falls back.

The kernel tests fail (not skip) if the kernel does not compile where a C++ compiler exists.
"""

import copy
import warnings

import pytest
import torch
from helpers import break_compile, compiled, needs_compiler, num_threads
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normlab.lab.training import channel_major_kernel as cmk
from normlab.lab.training.channel_major import norm_act_channel_major
from normlab.lab.training.channel_major_composites import GroupNormChannelMajor, RowBatchNorm
from normlab.lab.training.conv_forms import tap_rows

EPS = 1e-5


def _kernel():
    return compiled(cmk.CHANNEL_MAJOR)


def _params(c, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, generator=g).requires_grad_() for _ in range(3)]  # conv bias, weight, bias


def _close(got, ref, what, rel=2e-5, scale=1.0):
    """Within rel of the reference's largest magnitude, or of ``scale`` where larger: float32 rounding over sums of
    up to thousands of terms, or of terms of size ``scale`` that cancel (the input gradient of a group of one)."""
    got, ref = got.detach().double(), ref.detach().double()
    scale = max(float(ref.abs().max()), scale, 1.0) if ref.numel() else scale
    err = float((got - ref).abs().max()) if got.numel() else 0.0
    assert err <= rel * scale, f"{what}: max error {err:.3g} over scale {scale:.3g}"


def _group_float64(x, cb, w, b, relu_mask):
    """GroupNorm of (G, Cg, L, N) + conv bias in float64 (statistics per (g, n) over (Cg, L)), then times the mask
    (the kernel's own ReLU mask: where z is within rounding of 0 the two could differ, checked apart); (z, y, the
    input gradient's term size rstd * |w| * |dy| / |dy|)."""
    g, cg = x.shape[:2]
    v = x + cb.view(g, cg, 1, 1)
    mean = v.mean((1, 2), keepdim=True)
    var = (v - mean).square().mean((1, 2), keepdim=True)
    z = (v - mean) / torch.sqrt(var + EPS) * w.view(g, cg, 1, 1) + b.view(g, cg, 1, 1)
    term = float((torch.rsqrt(var + EPS).max() * w.abs().max()).detach())
    return z, (z if relu_mask is None else z * relu_mask), term


@needs_compiler
@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 6),
    cg=st.integers(1, 4),
    length=st.integers(1, 9),
    n=st.sampled_from([1, 2, 3, 4, 5, 8, 16, 17, 32, 40, 64, 70, 100]),
    relu=st.booleans(),
    shift=st.sampled_from([0.0, 1e4]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_group_kernel_matches_float64(groups, cg, length, n, relu, shift, threads, seed):
    _check_group_float64(groups, cg, length, n, relu, shift, threads, seed)


@needs_compiler
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shift", [0.0, 1e4])
def test_group_kernel_small_batches_match_float64(n, relu, shift):
    """Every batch width below the vector width (a small batch, 2 N <= 8 or 16 lanes, runs along a group's values:
    N dividing the width or not) and two past it; odd lengths and channels, so that vectors end mid-channel."""
    _check_group_float64(3, 3, 7, n, relu, shift, 2, n)


def _check_group_float64(groups, cg, length, n, relu, shift, threads, seed):
    kernel = _kernel()
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(groups, cg, length, n, generator=gen) * 2 + shift).requires_grad_()
    cb, w, b = _params(groups * cg, seed)
    dy = torch.randn(groups, cg, length, n, generator=gen)
    with num_threads(threads):
        y = cmk.GroupNormReLU.apply(x.view(groups, cg * length, n), cb, w, b, EPS, relu, kernel).view(x.shape)
        grads = torch.autograd.grad(y, (x, cb, w, b), dy)
    ref64 = [t.detach().double().requires_grad_() for t in (x, cb, w, b)]
    mask = (y > 0).double() if relu else None
    z64, y64, term = _group_float64(*ref64, mask)
    if relu:  # the kernel's mask is float64's wherever z is clear of 0 by more than float32 rounding
        clear = z64.detach().abs() > 1e-3
        assert torch.equal((y > 0)[clear], (z64 > 0)[clear])
    _close(y, y64, "output")
    for name, got, ref in zip(
        ("x", "conv bias", "weight", "bias"), grads, torch.autograd.grad(y64, ref64, dy.double()), strict=True
    ):
        cancelling = {
            "x": term * float(dy.abs().max()),
            "conv bias": term * float(dy.abs().max()) * (length * n) ** 0.5,
        }
        _close(got, ref, f"grad {name}", rel=5e-5, scale=cancelling.get(name, 1.0))


def _composite(x, cb, w, b, relu):
    y = GroupNormChannelMajor.apply(x, cb, w, b, EPS)
    return torch.relu(y) if relu else y


@needs_compiler
@pytest.mark.parametrize("shape", [(16, 32, 40, 32), (256, 2, 5, 32), (4, 3, 7, 19), (2, 1, 1, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_group_kernel_matches_the_composite(shape, relu):
    """Mean 0.5 (where the composite's float32 statistics are close to exact)."""
    kernel = _kernel()
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen) + 0.5).requires_grad_()
    cb, w, b = _params(shape[0] * shape[1], 1)
    dy = torch.randn(shape, generator=gen)
    y = cmk.GroupNormReLU.apply(x.view(shape[0], -1, shape[3]), cb, w, b, EPS, relu, kernel).view(shape)
    y0 = _composite(x, cb, w, b, relu)
    _close(y, y0, "output")
    for name, got, ref in zip(
        ("x", "conv bias", "weight", "bias"),
        torch.autograd.grad(y, (x, cb, w, b), dy),
        torch.autograd.grad(y0, (x, cb, w, b), dy),
        strict=True,
    ):
        _close(got, ref, f"grad {name}", rel=5e-5)


@needs_compiler
@pytest.mark.parametrize("n", [1, 2, 3, 4, 32])
@pytest.mark.parametrize("taps", [False, True])
def test_group_kernel_is_independent_of_the_thread_count(n, taps):
    """Output, statistics and gradients bit for bit equal on 1 and 2 threads (groups split between the tasks)."""
    kernel = _kernel()
    gen = torch.Generator().manual_seed(n)
    groups, cg, length = 64, 2, 40
    x = torch.randn(groups, cg * length, n, generator=gen) + 3
    cb, w, b = (t.detach() for t in _params(groups * cg, n))
    dest, rows = tap_rows(length, 1) if taps else (cmk.NO_TABLE, 0)
    dy = torch.randn(groups, cg * (rows or length), n, generator=gen)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            y, mean, rstd = kernel.group_forward(x, cg, cb, w, b, EPS, True, dest, rows)
            grads = kernel.group_backward(dy, x, cg, cb, w, b, mean, rstd, True, dest, rows)
            results.append((y, mean, rstd, *grads))
    for a, r in zip(*results, strict=True):
        assert torch.equal(a, r)


def test_group_kernel_takes_a_noncontiguous_upstream_gradient():
    kernel = _kernel()
    x = torch.randn(3, 8, 16, requires_grad=True)
    cb, w, b = _params(6, 2)
    y = cmk.GroupNormReLU.apply(x, cb, w, b, EPS, True, kernel)
    dy = torch.randn(16, 8, 3).permute(2, 1, 0)
    got = torch.autograd.grad(y, (x, cb, w, b), dy, retain_graph=True)
    ref = torch.autograd.grad(y, (x, cb, w, b), dy.contiguous())
    for a, r in zip(got, ref, strict=True):
        assert torch.equal(a, r)


def _row_float64(x, w, b, relu):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).square().mean(1, keepdim=True)
    z = (x - mean) / torch.sqrt(var + EPS) * w.view(-1, 1) + b.view(-1, 1)
    term = float((torch.rsqrt(var + EPS).max() * w.abs().max()).detach())
    return z, mean.view(-1), var.view(-1), term


@needs_compiler
@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(1, 12),
    m=st.sampled_from([2, 5, 16, 33, 160, 1280, 5000]),
    relu=st.booleans(),
    shift=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_row_kernel_matches_float64(rows, m, relu, shift, seed):
    kernel = _kernel()
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, m, generator=gen) * 3 + shift).requires_grad_()
    cb, w, b = _params(rows, seed)
    dy = torch.randn(rows, m, generator=gen)
    y, mean, var = cmk.RowBatchNormReLU.apply(x, cb, w, b, EPS, relu, kernel)
    gx, gcb, gw, gb = torch.autograd.grad(y, (x, cb, w, b), dy)
    ref64 = [t.detach().double().requires_grad_() for t in (x, w, b)]
    z64, mean64, var64, term = _row_float64(*ref64, relu)
    y64 = z64 * (y > 0).double() if relu else z64
    if relu:
        clear = z64.detach().abs() > 1e-3
        assert torch.equal((y > 0)[clear], (z64 > 0)[clear])
    _close(y, y64, "output")
    _close(mean, mean64, "mean", rel=1e-6)  # float32's rounding of a mean at 1e4
    _close(var, var64, "variance")
    assert torch.equal(gcb, torch.zeros(rows))
    for name, got, ref in zip(
        ("x", "weight", "bias"), (gx, gw, gb), torch.autograd.grad(y64, ref64, dy.double()), strict=True
    ):
        _close(got, ref, f"grad {name}", rel=5e-5, scale=term * float(dy.abs().max()) if name == "x" else 1.0)


@needs_compiler
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 32])
@pytest.mark.parametrize("taps", [False, True])
def test_row_kernel_is_independent_of_the_thread_count(n, taps):
    """Output, statistics and gradients bit for bit equal on 1 and 2 threads (rows split between the tasks), in the
    plain layout and the taps' (written and read as runs of slots: every small batch)."""
    kernel = _kernel()
    gen = torch.Generator().manual_seed(n)
    rows, length = 96, 40
    x = torch.randn(rows, length * n, generator=gen) * 3 + 1e4
    _, w, b = (t.detach() for t in _params(rows, n))
    dest, out_rows = tap_rows(length, 3) if taps else (cmk.NO_TABLE, 0)
    dy = torch.randn(rows, (out_rows or length) * n, generator=gen)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            y, stats = kernel.row_forward(x, w, b, EPS, True, dest, out_rows)
            grads = kernel.row_backward(dy, x, w, b, stats[0], stats[1], True, dest, out_rows)
            results.append((y, stats, *grads))
    for a, r in zip(*results, strict=True):
        assert torch.equal(a, r)


@needs_compiler
@pytest.mark.parametrize("taps", [False, True])
def test_kernels_write_into_out(taps):
    """Each kernel's ``out``: its output (forward) or grad_x (backward) written there, equal to the tensor it
    returns without one; the rest of the tensor ``out`` is a slice of untouched. A wrong size or an ``out`` over
    the input is refused, naming it."""
    kernel = _kernel()
    gen = torch.Generator().manual_seed(1)
    n, length, cg, groups = 2, 8, 2, 3
    dest, out_rows = tap_rows(length, 1) if taps else (cmk.NO_TABLE, 0)
    x = torch.randn(groups, cg * length, n, generator=gen) + 5
    cb, w, b = (t.detach() for t in _params(groups * cg, 1))
    size = groups * cg * (out_rows or length) * n
    calls = {
        "group_forward": (lambda o: kernel.group_forward(x, cg, cb, w, b, EPS, True, dest, out_rows, o)[0], size),
        "row_forward": (
            lambda o: kernel.row_forward(x.view(groups * cg, -1), w, b, EPS, True, dest, out_rows, o)[0],
            size,
        ),
    }
    y, mean, rstd = kernel.group_forward(x, cg, cb, w, b, EPS, True, dest, out_rows)
    ry, stats = kernel.row_forward(x.view(groups * cg, -1), w, b, EPS, True, dest, out_rows)
    dy = torch.randn(y.shape, generator=gen)
    calls["group_backward"] = (
        lambda o: kernel.group_backward(dy, x, cg, cb, w, b, mean, rstd, True, dest, out_rows, o)[0],
        x.numel(),
    )
    calls["row_backward"] = (
        lambda o: kernel.row_backward(
            dy.view(groups * cg, -1), x.view(groups * cg, -1), w, b, stats[0], stats[1], True, dest, out_rows, o
        )[0],
        x.numel(),
    )
    for name, (call, numel) in calls.items():
        fresh = call(None)
        whole = torch.full((numel + 7,), -1.0)
        got = call(whole[3 : 3 + numel])
        assert torch.equal(whole[3 : 3 + numel].view(fresh.shape), fresh), name
        assert torch.equal(got, fresh), name
        assert bool((whole[:3] == -1).all() and (whole[3 + numel :] == -1).all()), name
        with pytest.raises(RuntimeError, match="out: must be a contiguous float32 CPU tensor of"):
            call(torch.empty(numel + 1))
        with pytest.raises(RuntimeError, match="out: must be a contiguous float32 CPU tensor of"):
            call(torch.empty(numel, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="out: must not overlap the input"):
        kernel.group_backward(dy, x, cg, cb, w, b, mean, rstd, True, dest, out_rows, x.view(-1))


def _norm_act_step(norm, act, y, n, conv_bias):
    out = norm_act_channel_major(norm, act, y, n, conv_bias)
    kernel_nodes = {"GroupNormReLUBackward", "RowBatchNormReLUBackward"} & _graph(out.grad_fn)
    assert bool(kernel_nodes) == (cmk.channel_major_kernel() is not None)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out, (y, conv_bias, *norm.parameters()), upstream)
    return out.detach(), grads


@needs_compiler
@pytest.mark.parametrize("kind", ["batch", "group", "layer"])
@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU(), nn.Identity()])
def test_norm_act_with_and_without_the_kernel(kind, act, monkeypatch):
    """``norm_act_channel_major`` with the kernel, and on the composites (``NORMLAB_NO_KERNELS=1``): outputs,
    gradients and BatchNorm's running statistics equal within rounding; a non-ReLU activation runs after."""
    _kernel()
    k, c, length, n = 3, 8, 10, 32
    norm = {
        "batch": nn.BatchNorm1d(k * c),
        "group": nn.GroupNorm(k * c // 2, k * c),
        "layer": nn.GroupNorm(k, k * c),
    }[kind]
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    gen = torch.Generator().manual_seed(5)
    y = (torch.randn(k, c, length * n, generator=gen) + 3).requires_grad_()
    conv_bias = torch.randn(k * c, generator=gen).requires_grad_()
    other = copy.deepcopy(norm)
    got = _norm_act_step(norm, act, y, n, conv_bias)
    monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    ref = _norm_act_step(other, act, y, n, conv_bias)
    _close(got[0], ref[0], "output")
    for i, (a, r) in enumerate(zip(got[1], ref[1], strict=True)):
        _close(a, r, f"gradient {i}", rel=5e-5)
    for name, buf in norm.named_buffers():
        _close(buf, other.get_buffer(name), name, rel=1e-6)


def _graph(fn):
    """The names of the autograd nodes under ``fn``."""
    names, todo = set(), [fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo.extend(f for f, _ in node.next_functions)
    return names


def test_a_failed_compile_warns_once_and_falls_back(monkeypatch):
    calls = break_compile(monkeypatch, cmk.CHANNEL_MAJOR, "channel_major.cpp")
    norm, act = nn.GroupNorm(2, 4), nn.ReLU()
    y = torch.randn(2, 2, 5 * 4, requires_grad=True)
    conv_bias = torch.randn(4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"channel-major norm CPU kernel could not be compiled \(RuntimeError: "):
        out = norm_act_channel_major(norm, act, y, 4, conv_bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        out2 = norm_act_channel_major(norm, act, y, 4, conv_bias)
    assert calls == [1]
    assert torch.equal(out, out2)
    ref = torch.relu(GroupNormChannelMajor.apply(y.view(2, 2, 5, 4), conv_bias, norm.weight, norm.bias, norm.eps))
    assert torch.equal(out, ref)


def test_disabled_kernels_take_the_composites(monkeypatch):
    monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    assert cmk.channel_major_kernel() is None
    norm, act = nn.BatchNorm1d(4), nn.ReLU()
    y = torch.randn(2, 2, 5 * 4, requires_grad=True)
    conv_bias = torch.randn(4, requires_grad=True)
    out = norm_act_channel_major(norm, act, y, 4, conv_bias)
    names = _graph(out.grad_fn)
    assert "RowBatchNormBackward" in names and "ReluBackward0" in names and "RowBatchNormReLUBackward" not in names
    ref, _, _ = RowBatchNorm.apply(y.view(1, 4, 20), conv_bias, norm.weight, norm.bias, norm.eps)
    assert torch.equal(out.view(-1), torch.relu(ref).view(-1))


@needs_compiler
def test_split_kernel_refuses_a_plan_that_does_not_fit():
    """split_forward (a mixed pack's layer in one call): runs that do not add up to K, groups that do not divide a
    part's channels, or a missing weight are refused, naming the argument."""
    kernel = _kernel()
    k, c, n, length = 3, 4, 2, 5
    y = torch.randn(k, c, length * n)
    cb = torch.randn(k * c)
    params = [torch.randn(c) for _ in range(2 * k)]
    good = ([1, 1, 1], [0, 2, 4], [EPS] * 3)
    out, saved, stats = kernel.split_forward(y, cb, n, *good, params, True, cmk.NO_TABLE, 0)
    assert out.shape == (k, c * length * n) and len(saved) == 2 * k and len(stats) == 2
    with pytest.raises(RuntimeError, match="runs must add up to K"):
        kernel.split_forward(y, cb, n, [1, 1], [0, 2], [EPS] * 2, params[:4], True, cmk.NO_TABLE, 0)
    with pytest.raises(RuntimeError, match="groups must divide a part's channels"):
        kernel.split_forward(y, cb, n, [1, 1, 1], [0, 3, 4], [EPS] * 3, params, True, cmk.NO_TABLE, 0)
    with pytest.raises(RuntimeError, match="params: two per part"):
        kernel.split_forward(y, cb, n, *good, params[:5], True, cmk.NO_TABLE, 0)
