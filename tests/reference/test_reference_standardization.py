"""The float64 reference is itself checked twice: against central finite differences and against torch autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, nchw_shapes, numeric_grad
from hypothesis import given
from hypothesis import strategies as st
from tolerances import FINITE_DIFFERENCE

from normlab import reference as R

EPS = 1e-5


def _methods(shape):
    """(name, forward(x, w, b) -> (y, saved), parameter shape) for every standardizing method on ``shape``."""
    c = shape[1]
    g = next(d for d in (3, 2, 1) if c % d == 0)
    trailing = tuple(shape[-2:])
    return [
        ("batch", lambda x, w, b: R.batch_norm(x, w, b, EPS), (c,)),
        ("instance", lambda x, w, b: R.instance_norm(x, w, b, EPS), (c,)),
        ("group", lambda x, w, b: R.group_norm(x, g, w, b, EPS), (c,)),
        ("layer", lambda x, w, b: R.layer_norm(x, trailing, w, b, EPS), trailing),
        ("rms", lambda x, w, b: R.rms_norm(x, trailing, w, EPS), trailing),
        (
            "batch_eval",
            lambda x, w, b: R.batch_norm_inference(x, np.linspace(-1, 1, c), np.linspace(0.5, 2, c), w, b, EPS),
            (c,),
        ),
    ]


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6, 2, 3)])
@pytest.mark.parametrize("index", range(6))
def test_backward_matches_finite_differences(shape, index, rng):
    name, forward, pshape = _methods(shape)[index]
    x = rng.normal(size=shape) * 2 + 0.5
    w = rng.normal(size=pshape) + 1
    b = rng.normal(size=pshape)
    dy = rng.normal(size=shape)

    def loss():
        return float((forward(x, w, b)[0] * dy).sum())

    y, saved = forward(x, w, b)
    dx, dw, db = R.backward(dy, saved)
    step, atol, rtol = FINITE_DIFFERENCE["step"], FINITE_DIFFERENCE["atol"], FINITE_DIFFERENCE["rtol"]
    assert_close(dx, numeric_grad(loss, x, step), atol=atol, rtol=rtol, msg=f"{name} dx")
    assert_close(dw, numeric_grad(loss, w, step), atol=atol, rtol=rtol, msg=f"{name} dweight")
    if name != "rms":
        assert_close(db, numeric_grad(loss, b, step), atol=atol, rtol=rtol, msg=f"{name} dbias")


def _torch_twin(name, shape):
    c = shape[1]
    g = next(d for d in (3, 2, 1) if c % d == 0)
    trailing = tuple(shape[-2:])
    return {
        "batch": lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.0, EPS),
        "instance": lambda x, w, b: F.instance_norm(x, None, None, w, b, True, 0.0, EPS),
        "group": lambda x, w, b: F.group_norm(x, g, w, b, EPS),
        "layer": lambda x, w, b: F.layer_norm(x, trailing, w, b, EPS),
        "rms": lambda x, w, b: F.rms_norm(x, trailing, w, EPS),
        "batch_eval": lambda x, w, b: F.batch_norm(
            x,
            torch.linspace(-1, 1, c, dtype=torch.float64),
            torch.linspace(0.5, 2, c, dtype=torch.float64),
            w,
            b,
            False,
            0.0,
            EPS,
        ),
    }[name]


@given(shape=nchw_shapes(min_dims=3, max_dims=5, min_batch=2), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_torch_autograd_float64(shape, seed):
    rng = np.random.default_rng(seed)
    for name, forward, pshape in _methods(shape):
        if name == "instance" and np.prod(shape[2:]) == 1:
            continue
        x = rng.normal(size=shape) * rng.uniform(0.5, 3) + rng.normal()
        w, b, dy = rng.normal(size=pshape) + 1, rng.normal(size=pshape), rng.normal(size=shape)
        y, saved = forward(x, w, b)
        dx, dw, db = R.backward(dy, saved)
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = _torch_twin(name, shape)(xt, wt, bt if name != "rms" else None)
        yt.backward(torch.tensor(dy))
        tol = dict(atol=1e-8, rtol=1e-7)
        assert_close(yt, y, **tol, msg=f"{name} y")
        assert_close(xt.grad, dx, **tol, msg=f"{name} dx")
        assert_close(wt.grad, dw, **tol, msg=f"{name} dweight")
        if db is not None:
            assert_close(bt.grad, db, **tol, msg=f"{name} dbias")


@pytest.mark.parametrize(
    "update, torch_update, shape",
    [
        (R.running_stats_update, lambda x, rm, rv, m: F.batch_norm(x, rm, rv, training=True, momentum=m), (6, 3, 4)),
        (
            R.instance_running_stats_update,
            lambda x, rm, rv, m: F.instance_norm(x, rm, rv, use_input_stats=True, momentum=m),
            (4, 3, 7),
        ),
    ],
)
def test_running_stats_update_matches_torch(update, torch_update, shape, rng):
    x = rng.normal(size=shape) * 2 + 1
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    new_mean, new_var = update(rm, rv, x, 0.3)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    torch_update(torch.tensor(x), rm_t, rv_t, 0.3)
    assert_close(rm_t, new_mean, atol=1e-12, rtol=1e-12)
    assert_close(rv_t, new_var, atol=1e-12, rtol=1e-12)


def test_standardize_is_zero_mean_unit_variance_over_each_set(rng):
    x = rng.normal(size=(4, 6, 5)) * 3 + 7
    layout = R.group_layout(x.shape, 3)
    x_hat, _, _ = R.standardize(x, layout, eps=0.0)
    v = x_hat.reshape(layout.view)
    np.testing.assert_allclose(v.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(v.var(axis=2), 1, atol=1e-12)
