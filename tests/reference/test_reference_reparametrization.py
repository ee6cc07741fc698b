import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, numeric_grad
from tolerances import FINITE_DIFFERENCE

from normlab import reference as R

FD = dict(atol=FINITE_DIFFERENCE["atol"], rtol=FINITE_DIFFERENCE["rtol"])


@pytest.mark.parametrize("shape, dim", [((4, 3), 0), ((4, 3), 1), ((5, 2, 3, 3), 0), ((4, 3), None)])
def test_weight_norm_backward_matches_finite_differences(shape, dim, rng):
    v = rng.normal(size=shape)
    g = R.norm_except_dim(v, dim) * rng.uniform(0.5, 2, size=R.norm_except_dim(v, dim).shape)
    dw = rng.normal(size=shape)
    dv, dg = R.weight_norm_backward(dw, v, g, dim)

    def loss():
        return float((R.weight_norm(v, g, dim) * dw).sum())

    assert_close(dv, numeric_grad(loss, v, FINITE_DIFFERENCE["step"]), **FD)
    assert_close(dg, numeric_grad(loss, g, FINITE_DIFFERENCE["step"]), **FD)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_matches_torch(dim, rng):
    v = rng.normal(size=(4, 3))
    g = rng.uniform(0.5, 2, size=R.norm_except_dim(v, dim).shape)
    tdim = -1 if dim is None else dim
    vt, gt = torch.tensor(v, requires_grad=True), torch.tensor(g, requires_grad=True)
    w = torch._weight_norm(vt, gt, tdim)
    dw = rng.normal(size=v.shape)
    w.backward(torch.tensor(dw))
    assert_close(w, R.weight_norm(v, g, dim), atol=1e-12, rtol=1e-12)
    dv, dg = R.weight_norm_backward(dw, v, g, dim)
    assert_close(vt.grad, dv, atol=1e-12, rtol=1e-10)
    assert_close(gt.grad, dg, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("centered", [False, True])
def test_cosine_linear_backward_matches_finite_differences(centered, rng):
    x, w = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    dy = rng.normal(size=(3, 4))
    dx, dw = R.cosine_linear_backward(dy, x, w, centered)

    def loss():
        return float((R.cosine_linear(x, w, centered) * dy).sum())

    assert_close(dx, numeric_grad(loss, x, FINITE_DIFFERENCE["step"]), **FD)
    assert_close(dw, numeric_grad(loss, w, FINITE_DIFFERENCE["step"]), **FD)


def test_cosine_linear_is_cosine_and_pearson(rng):
    x, w = rng.normal(size=(6, 7)) + 2, rng.normal(size=(3, 7))
    cos = R.cosine_linear(x, w)
    expected = F.cosine_similarity(torch.tensor(x)[:, None, :], torch.tensor(w)[None, :, :], dim=-1)
    assert_close(cos, expected, atol=1e-12, rtol=1e-12)
    pearson = R.cosine_linear(x, w, centered=True)
    expected = np.array([[np.corrcoef(xi, wo)[0, 1] for wo in w] for xi in x])
    assert_close(pearson, expected, atol=1e-12, rtol=1e-10)
    assert np.abs(cos).max() <= 1 and np.abs(pearson).max() <= 1


def test_cosine_of_zero_vector_is_zero_with_finite_gradient(rng):
    x = np.zeros((2, 5))
    w = rng.normal(size=(3, 5))
    assert (R.cosine_linear(x, w) == 0).all()
    dx, dw = R.cosine_linear_backward(np.ones((2, 3)), x, w)
    assert np.isfinite(dx).all() and np.isfinite(dw).all()
