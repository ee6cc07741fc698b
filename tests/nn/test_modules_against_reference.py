"""normlab.nn modules against the float64 reference: forward, input and parameter gradients, running statistics."""

import pytest
import torch
from helpers import assert_close, random_input, random_params
from hypothesis import given
from hypothesis import strategies as st
from tolerances import LARGE_MEAN_RELATIVE, vs_reference

import normlab.nn as nl
from normlab import reference as R

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _channel_module(kind, c, dtype):
    return {
        "batch2d": lambda: nl.BatchNorm2d(c, dtype=dtype),
        "instance2d": lambda: nl.InstanceNorm2d(c, affine=True, dtype=dtype),
        "group": lambda: nl.GroupNorm(c // 2 if c % 2 == 0 else c, c, dtype=dtype),
        "layer": lambda: nl.LayerNorm([c, 3, 4], dtype=dtype),
        "rms": lambda: nl.RMSNorm([c, 3, 4], dtype=dtype),
    }[kind]()


def _reference(kind, module, x, w, b):
    c = x.shape[1]
    return {
        "batch2d": lambda: R.batch_norm(x, w, b, module.eps),
        "instance2d": lambda: R.instance_norm(x, w, b, module.eps),
        "group": lambda: R.group_norm(x, module.num_groups, w, b, module.eps),
        "layer": lambda: R.layer_norm(x, (c, 3, 4), w, b, module.eps),
        "rms": lambda: R.rms_norm(x, (c, 3, 4), w, torch.finfo(module.weight.dtype).eps),
    }[kind]()


@given(
    kind=st.sampled_from(["batch2d", "instance2d", "group", "layer", "rms"]),
    n=st.integers(2, 4),
    c=st.sampled_from([2, 4, 6]),
    dtype=st.sampled_from(DTYPES),
    channels_last=st.booleans(),
    shift=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 10_000),
)
def test_module_matches_reference(kind, n, c, dtype, channels_last, shift, seed):
    module = _channel_module(kind, c, dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(random_params(p.numel(), dtype, seed=seed + 1)[0].reshape(p.shape))
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(random_params(module.bias.numel(), dtype, seed=seed + 2)[1].reshape(module.bias.shape))
    x = random_input((n, c, 3, 4), dtype, seed=seed, scale=2.0, shift=shift)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = module(x)
    dy = random_input(x.shape, dtype, seed=seed + 3)
    y.backward(dy)

    w = module.weight.detach().double().numpy()
    b = None if getattr(module, "bias", None) is None else module.bias.detach().double().numpy()
    y_ref, saved = _reference(kind, module, x.detach().double().numpy(), w, b)
    dx_ref, dw_ref, db_ref = R.backward(dy.double().numpy(), saved)
    scale = max(1.0, float(abs(y_ref).max()))
    tol = vs_reference(dtype)
    assert_close(y, y_ref, atol=tol["atol"] * scale, rtol=tol["rtol"], msg="output")
    gtol = vs_reference(dtype, grad=True)
    dscale = max(1.0, float(abs(dx_ref).max()))
    assert_close(x.grad, dx_ref, atol=gtol["atol"] * dscale, rtol=gtol["rtol"], msg="input grad")
    wscale = max(1.0, float(abs(dw_ref).max()))
    assert_close(module.weight.grad, dw_ref, atol=gtol["atol"] * wscale * 4, rtol=gtol["rtol"], msg="weight grad")
    if db_ref is not None:
        bscale = max(1.0, float(abs(db_ref).max()))
        assert_close(module.bias.grad, db_ref, atol=gtol["atol"] * bscale * 4, rtol=gtol["rtol"], msg="bias grad")


@given(n=st.integers(2, 6), c=st.integers(1, 5), steps=st.integers(1, 4), momentum=st.sampled_from([0.1, 0.7]))
def test_batch_norm_running_stats_follow_reference(n, c, steps, momentum):
    module = nl.BatchNorm1d(c, momentum=momentum, dtype=torch.float64)
    rm, rv = module.running_mean.numpy().copy(), module.running_var.numpy().copy()
    for s in range(steps):
        x = random_input((n, c, 3), torch.float64, seed=s, scale=1 + s, shift=s)
        module(x)
        rm, rv = R.running_stats_update(rm, rv, x.numpy(), momentum)
    assert_close(module.running_mean, rm, atol=1e-12, rtol=1e-12)
    assert_close(module.running_var, rv, atol=1e-12, rtol=1e-12)
    module.eval()
    x = random_input((n, c, 3), torch.float64, seed=99)
    y_ref, _ = R.batch_norm_inference(x.numpy(), rm, rv, module.weight.detach().numpy(), module.bias.detach().numpy())
    assert_close(module(x), y_ref, atol=1e-12, rtol=1e-12)


CASES = {
    "batch": (lambda: nl.BatchNorm2d(8), lambda x: R.batch_norm(x)[0]),
    "instance": (lambda: nl.InstanceNorm2d(8), lambda x: R.instance_norm(x)[0]),
    "group": (lambda: nl.GroupNorm(4, 8), lambda x: R.group_norm(x, 4)[0]),
    "layer": (lambda: nl.LayerNorm([8, 32, 32]), lambda x: R.layer_norm(x, (8, 32, 32))[0]),
}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_large_mean_has_no_cancellation(kind, channels_last):
    """fp32 input with mean 1e4, std 1: E[x^2]-E[x]^2 would lose all digits; the output must hold 2e-3 relative."""
    make, reference = CASES[kind]
    x = random_input((16, 8, 32, 32), torch.float32, seed=3, shift=1e4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = make()(x).double()
    y_ref = torch.from_numpy(reference(x.double().numpy()))
    relative = float((y - y_ref).abs().max() / y_ref.abs().max())
    assert relative < LARGE_MEAN_RELATIVE, f"{kind}: relative error {relative:.2e}"


@pytest.mark.parametrize(
    "cls, shape, fmt",
    [
        (nl.BatchNorm2d, (16, 8, 12, 12), torch.channels_last),
        (nl.BatchNorm3d, (4, 8, 5, 6, 7), torch.channels_last_3d),
    ],
)
def test_channels_last_training_batch_norm_is_exact_at_large_means(cls, shape, fmt):
    """CPU channels_last training BatchNorm (two-pass statistics on the channels_last tensor itself, ATen's fused
    kernels for the elementwise forward and the backward): at mean 1e4, std 1, the output, the input and parameter
    gradients and the running statistics against the float64 reference, in the input's layout, over two steps."""
    module = cls(shape[1])
    w, b = random_params(shape[1], torch.float32, seed=5)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    rm, rv = module.running_mean.double().numpy().copy(), module.running_var.double().numpy().copy()
    for step in range(2):
        x = random_input(shape, torch.float32, seed=11 + step, scale=1.0 + step, shift=1e4)
        x = x.contiguous(memory_format=fmt).requires_grad_(True)
        module.zero_grad()
        y = module(x)
        dy = random_input(shape, torch.float32, seed=21 + step).contiguous(memory_format=fmt)
        y.backward(dy)
        assert y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)
        x64 = x.detach().double().numpy()
        y_ref, saved = R.batch_norm(
            x64, module.weight.detach().double().numpy(), module.bias.detach().double().numpy(), module.eps
        )
        dx_ref, dw_ref, db_ref = R.backward(dy.double().numpy(), saved)
        rm, rv = R.running_stats_update(rm, rv, x64, module.momentum)
        y_ref = torch.from_numpy(y_ref)
        relative = float((y.detach().double() - y_ref).abs().max() / y_ref.abs().max())
        assert relative < LARGE_MEAN_RELATIVE, f"output: relative error {relative:.2e}"
        gtol = vs_reference(torch.float32, grad=True)
        for name, got, ref in [
            ("input grad", x.grad, dx_ref),
            ("weight grad", module.weight.grad, dw_ref),
            ("bias grad", module.bias.grad, db_ref),
        ]:
            assert_close(got, ref, atol=gtol["atol"] * max(1.0, float(abs(ref).max())), rtol=gtol["rtol"], msg=name)
        assert_close(module.running_mean, rm, **vs_reference(torch.float32), msg="running_mean")
        assert_close(module.running_var, rv, **vs_reference(torch.float32), msg="running_var")
    assert int(module.num_batches_tracked) == 2


@pytest.mark.parametrize("shape, fmt", [((3, 4, 3, 3), torch.channels_last), ((2, 3, 2, 3, 2), torch.channels_last_3d)])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_training_batch_norm_has_second_derivatives(shape, fmt, affine):
    """The channels_last path's backward (ATen's fused BatchNorm backward) is differentiable itself."""
    from normlab import functional as NF

    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    params = (
        (
            (torch.rand(shape[1], dtype=torch.float64) + 0.5).requires_grad_(True),
            torch.randn(shape[1], dtype=torch.float64, requires_grad=True),
        )
        if affine
        else ()
    )

    def f(x, *p):
        return NF.batch_norm(x, None, None, *p, training=True)

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))
