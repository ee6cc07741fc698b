"""The channel-major norm kernel writing the next stride-2 conv's taps (``conv_forms.tap_rows``,
``channel_major.norm_act_taps``): the table against ParityConv and a strided conv, the kernel's tap output and
gradients against float64 at means 0 and 1e4 and against its own plain layout, BatchNorm's running statistics, and
the packed ConvNet's training step equal with the taps, without them (ParityConv after the kernel) and without the
kernel (``NORMLAB_NO_KERNELS=1``).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_nodes, needs_compiler
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normlab.lab.config import make_config
from normlab.lab.training import models
from normlab.lab.training.channel_major import norm_act_channel_major, norm_act_taps
from normlab.lab.training.conv_forms import ParityConv, position_order, tap_rows
from normlab.lab.training.packed import PackedSGD, pack_state
from normlab.lab.training.train import build_classifier, build_packed_classifier, classifier_data

from .test_channel_major_kernel import _close, _kernel


def _gather_taps(h, length, halvings):
    """The taps ``(K, C*3, L/2*N)`` of maps ``h`` ``(K, C, L, N)`` by indexing, from ``tap_rows``' table (the
    reference the kernel's writes are checked against): row t*L/2 + i of a channel is the slot whose dest names it,
    0 where none does."""
    k, c, _, n = h.shape
    dest, rows = tap_rows(length, halvings)
    src = torch.full((rows,), length, dtype=torch.long)  # slot `length`: a zero row appended
    for slot, (a, b) in enumerate(dest.tolist()):
        src[a] = slot
        if b >= 0:
            src[b] = slot
    padded = torch.cat([h, h.new_zeros(k, c, 1, n)], dim=2)
    return padded[:, :, src].reshape(k, c * 3, length // 2 * n)


@pytest.mark.parametrize("length,halvings", [(40, 3), (8, 3), (20, 2), (6, 1), (2, 1)])
def test_tap_rows_make_the_stride_2_conv_one_product(length, halvings):
    """bmm(weight viewed (K, C_out, C*3), taps) is ParityConv's output, and its gradients ParityConv's."""
    gen = torch.Generator().manual_seed(length)
    k, c, c_out, n = 2, 3, 4, 5
    x = torch.randn(k, c, length, n, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k * c_out, c, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    got = torch.bmm(w.view(k, c_out, c * 3), _gather_taps(x, length, halvings))
    ref = ParityConv.apply(x, w, halvings)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (x, w), dy), torch.autograd.grad(ref, (x, w), dy), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and the natural-order conv: the stored order is position_order's
    natural = torch.empty_like(x.detach())
    natural[:, :, list(position_order(length, halvings))] = x.detach()
    conv = F.conv1d(natural.permute(3, 0, 1, 2).reshape(n, k * c, length), w.detach(), stride=2, padding=1, groups=k)
    out_order = list(position_order(length // 2, halvings - 1))
    torch.testing.assert_close(
        got.detach().view(k, c_out, length // 2, n), conv.view(n, k, c_out, -1).permute(1, 2, 3, 0)[:, :, out_order]
    )


def _norm(kind, k, c):
    norm = {"batch": nn.BatchNorm1d(k * c), "group": nn.GroupNorm(k * c // 2, k * c), "layer": nn.GroupNorm(k, k * c)}
    module = norm[kind]
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def _float64(kind, norm, y, conv_bias, weight, bias, k, c, length, n):
    """norm(y + conv_bias) in float64 on (K, C, L, N) maps (statistics per channel, or per group and example),
    and the largest rstd (the size of the input gradient's cancelling terms, with |w| and |dy|)."""
    v = (y + conv_bias.view(k, c, 1)).view(k, c, length, n)
    w, b = weight.view(k, c, 1, 1), bias.view(k, c, 1, 1)
    if kind == "batch":
        dims, g = (2, 3), v
    else:
        g = v.reshape(norm.num_groups, -1, n)
        dims = (1,)
    mean = g.mean(dims, keepdim=True)
    var = (g - mean).square().mean(dims, keepdim=True)
    z = ((g - mean) / torch.sqrt(var + norm.eps)).view(k, c, length, n) * w + b
    return z, float(torch.rsqrt(var + norm.eps).detach().max())


@needs_compiler
@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(["batch", "group", "layer"]),
    halvings=st.integers(1, 3),
    mult=st.integers(1, 3),
    n=st.sampled_from([1, 2, 3, 4, 16, 17, 32, 40]),
    relu=st.booleans(),
    shift=st.sampled_from([0.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_taps_match_float64_and_the_plain_layout(kind, halvings, mult, n, relu, shift, seed):
    """The kernel's taps: the output equal (bit for bit) to its plain-layout output gathered into taps, within
    float32 rounding of float64's (means 0 and 1e4); every gradient within rounding of float64's and of the plain
    layout's; BatchNorm's running statistics equal to the plain layout's."""
    _check_taps(kind, halvings, mult, n, relu, shift, seed)


@needs_compiler
@pytest.mark.parametrize("kind", ["group", "layer"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 32])
@pytest.mark.parametrize("halvings,mult", [(1, 5), (3, 1)])
def test_small_batch_taps_match_float64_and_the_plain_layout(kind, n, halvings, mult):
    """As above for each small batch (the GroupNorm kernel's path along a group's values), ReLU, mean 1e4."""
    _check_taps(kind, halvings, mult, n, True, 1e4, n)


@needs_compiler
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17])
@pytest.mark.parametrize("halvings,mult", [(1, 5), (3, 1), (2, 3)])
@pytest.mark.parametrize("relu", [False, True])
def test_small_batch_batchnorm_taps_match_float64_and_the_plain_layout(n, halvings, mult, relu):
    """As above for BatchNorm's row kernel at each small batch (a slot of N values shorter than a vector: the row
    written, and dy read, as runs of slots), mean 1e4."""
    _check_taps("batch", halvings, mult, n, relu, 1e4, n)


def _check_taps(kind, halvings, mult, n, relu, shift, seed):
    _kernel()
    torch.manual_seed(seed)
    k, c, length = 2, 4, 2**halvings * mult
    norm = _norm(kind, k, c)
    act = nn.ReLU() if relu else nn.Identity()
    gen = torch.Generator().manual_seed(seed)
    y = (torch.randn(k, c, length * n, generator=gen) * 2 + shift).requires_grad_()
    conv_bias = torch.randn(k * c, generator=gen).requires_grad_()
    plain_norm = copy.deepcopy(norm)
    taps = norm_act_taps(norm, act, y, n, conv_bias, tap_rows(length, halvings))
    assert taps is not None and "ParityConvBackward" not in autograd_nodes(taps.grad_fn)
    plain = norm_act_channel_major(plain_norm, act, y, n, conv_bias)
    assert torch.equal(taps, _gather_taps(plain, length, halvings))
    for name, buf in norm.named_buffers():
        assert torch.equal(buf, plain_norm.get_buffer(name)), name
    dy = torch.randn(taps.shape, generator=gen)
    params = (y, conv_bias, norm.weight, norm.bias)
    grads = torch.autograd.grad(taps, params, dy)
    plain_params = (y, conv_bias, plain_norm.weight, plain_norm.bias)
    plain_grads = torch.autograd.grad(_gather_taps(plain, length, halvings), plain_params, dy)
    ref64 = [p.detach().double().requires_grad_() for p in params]
    z64, rstd = _float64(kind, norm, *ref64, k, c, length, n)
    mask = (plain > 0).double() if relu else 1.0
    if relu:  # the kernel's mask is float64's wherever z is clear of 0 by more than float32 rounding
        clear = z64.detach().abs() > 1e-3
        assert torch.equal((plain > 0)[clear], (z64 > 0)[clear])
    out64 = _gather_taps(z64 * mask, length, halvings)
    _close(taps, out64, "taps")
    grads64 = torch.autograd.grad(out64, ref64, dy.double())
    term = rstd * float(norm.weight.detach().abs().max()) * float(dy.abs().max())
    names = ("y", "conv bias", "weight", "bias")
    for name, got, plain_got, ref in zip(names, grads, plain_grads, grads64, strict=True):
        scale = term * (length * n if name == "conv bias" else 1) ** 0.5
        _close(got, ref, f"grad {name} vs float64", rel=5e-5, scale=scale if name in ("y", "conv bias") else 1.0)
        _close(got, plain_got, f"grad {name} vs the plain layout", rel=5e-5, scale=scale)


@needs_compiler
def test_taps_are_none_where_the_kernel_does_not_run(monkeypatch):
    _kernel()
    k, c, length, n = 2, 4, 8, 4
    y = torch.randn(k, c, length * n, requires_grad=True)
    conv_bias = torch.randn(k * c, requires_grad=True)
    table = tap_rows(length, 1)
    assert norm_act_taps(nn.GroupNorm(2, k * c), nn.GELU(), y, n, conv_bias, table) is None  # another activation
    assert norm_act_taps(nn.Identity(), nn.ReLU(), y, n, conv_bias, table) is None  # no norm
    assert norm_act_taps(nn.BatchNorm1d(k * c).eval(), nn.ReLU(), y, n, conv_bias, table) is None  # eval statistics
    monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    assert norm_act_taps(nn.GroupNorm(2, k * c), nn.ReLU(), y, n, conv_bias, table) is None


def _train(norm, batch, layout, monkeypatch, steps=3, copies=3):
    """Losses and state after ``steps`` packed SGD steps in the matmul form: ``layout`` "taps" (the kernel writes the
    next conv's taps), "plain" (the kernel, then ParityConv) or "composite" (no kernel)."""
    monkeypatch.setattr(models, "TAPS_MIN_BATCH", 1 if layout == "taps" else 10**9)
    if layout == "composite":
        monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    c = make_config(study="test", norm=norm, seed=0, batch_size=batch, lr=0.05, depth=4)
    data = classifier_data(c)
    torch.manual_seed(0)
    singles = [build_classifier(c, data) for _ in range(copies)]
    packed = build_packed_classifier([c] * copies, data)
    packed.packed_form = "matmul"
    opt = PackedSGD(packed, pack_state(singles, packed), [c.lr] * copies, [0.0] * copies, c.momentum)
    idx = torch.arange(copies * batch).view(batch, copies)
    x, y = data.x_train[idx].reshape(batch, copies, -1), data.y_train[idx]
    losses = []
    for _ in range(steps):
        logits = packed(x)
        nodes = autograd_nodes(logits.grad_fn)
        assert ("ParityConvBackward" in nodes) == (layout != "taps")
        assert bool({"GroupNormReLUBackward", "RowBatchNormReLUBackward"} & nodes) == (layout != "composite")
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0)
        opt.zero_grad()
        loss.sum().backward()
        opt.step(1.0)
        losses.append(loss.detach())
    monkeypatch.delenv("NORMLAB_NO_KERNELS", raising=False)
    return torch.stack(losses), packed.state_dict()


@needs_compiler
@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
@pytest.mark.parametrize("batch", [32, 5])
def test_packed_training_equal_in_both_layouts_and_without_the_kernel(norm, batch, monkeypatch):
    _kernel()
    monkeypatch.delenv("NORMLAB_NO_KERNELS", raising=False)
    got = _train(norm, batch, "taps", monkeypatch)
    for other in ("plain", "composite"):
        losses, state = _train(norm, batch, other, monkeypatch)
        _close(got[0], losses, f"losses vs {other}", rel=1e-5)
        for name, value in got[1].items():
            if value.is_floating_point():
                _close(value, state[name], f"{name} vs {other}", rel=1e-5)
            else:
                assert torch.equal(value, state[name]), name
