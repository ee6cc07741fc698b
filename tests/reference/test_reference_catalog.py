"""The analytic float64 backwards of the catalog methods (EvoNorm-B0/S0, Switchable, LRN, mean-only BN) against
central finite differences of their own forwards, and the forwards against torch's autograd-free definitions."""

import numpy as np
import pytest
import torch
from helpers import assert_close, numeric_grad
from tolerances import FINITE_DIFFERENCE

from normlab import reference as R

FD = dict(atol=FINITE_DIFFERENCE["atol"], rtol=FINITE_DIFFERENCE["rtol"])
SHAPES = [(3, 4, 5), (2, 4, 3, 3)]


def _check(forward, grads, arrays, dy):
    def loss():
        return float((forward() * dy).sum())

    for analytic, a in zip(grads, arrays, strict=True):
        assert_close(analytic, numeric_grad(loss, a, FINITE_DIFFERENCE["step"]), **FD)


def _params(rng, c):
    return [1 + 0.3 * rng.normal(size=c), 0.3 * rng.normal(size=c), 1 + 0.3 * rng.normal(size=c)]


@pytest.mark.parametrize("shape", SHAPES)
def test_evonorm_s0_backward(shape, rng):
    x, dy = rng.normal(size=shape) * 2 + 0.5, rng.normal(size=shape)
    w, b, v1 = _params(rng, shape[1])
    grads = R.response.evonorm_s0_backward(dy, x, w, b, v1, 2)
    _check(lambda: R.response.evonorm_s0(x, w, b, v1, 2), grads, [x, w, b, v1], dy)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("v1_scale", [0.2, 3.0])  # the batch branch wins mostly / the instance branch mostly
def test_evonorm_b0_backward(shape, v1_scale, rng):
    x, dy = rng.normal(size=shape) * 2 + 0.5, rng.normal(size=shape)
    w, b, v1 = _params(rng, shape[1])
    v1 = v1 * v1_scale
    _, batch_std, _, inst_term, _ = R.response._evonorm_b0_parts(x, w, b, v1, 1e-5)
    wins = batch_std >= inst_term
    assert 0 < wins.mean() < 1, "both branches of the max must be exercised"
    grads = R.response.evonorm_b0_backward(dy, x, w, b, v1)
    _check(lambda: R.response.evonorm_b0(x, w, b, v1), grads, [x, w, b, v1], dy)


@pytest.mark.parametrize("shape", SHAPES)
def test_switchable_norm_backward(shape, rng):
    x, dy = rng.normal(size=shape) * 2 + 0.5, rng.normal(size=shape)
    w, b, _ = _params(rng, shape[1])
    mean_logits, var_logits = rng.normal(size=3), rng.normal(size=3)
    grads = R.response.switchable_norm_backward(dy, x, w, b, mean_logits, var_logits)
    _check(
        lambda: R.response.switchable_norm(x, w, b, mean_logits, var_logits),
        grads,
        [x, w, b, mean_logits, var_logits],
        dy,
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_local_response_norm_backward(size, rng):
    x, dy = rng.normal(size=(2, 6, 4)) * 2, rng.normal(size=(2, 6, 4))
    dx = R.response.local_response_norm_backward(dy, x, size, alpha=0.5, beta=0.75, k=1.0)
    _check(lambda: R.response.local_response_norm(x, size, 0.5, 0.75, 1.0), [dx], [x], dy)


def test_local_response_norm_matches_torch(rng):
    x = rng.normal(size=(2, 7, 3, 3))
    ours = R.response.local_response_norm(x, 4, 0.3, 0.6, 2.0)
    assert_close(
        torch.nn.functional.local_response_norm(torch.from_numpy(x), 4, 0.3, 0.6, 2.0), ours, atol=1e-12, rtol=1e-12
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_only_batch_norm_backward(shape, rng):
    x, dy = rng.normal(size=shape) + 3, rng.normal(size=shape)
    b = rng.normal(size=shape[1])
    _check(
        lambda: R.batch_variants.mean_only_batch_norm(x, b),
        R.batch_variants.mean_only_batch_norm_backward(dy),
        [x, b],
        dy,
    )


def test_switchable_one_hot_weights_give_back_instance_layer_and_batch_norm(rng):
    x = rng.normal(size=(3, 4, 5)) * 2 + 1
    big = 60.0  # softmax of (60, 0, 0) is one-hot to float64 precision
    for k, reference in enumerate([R.instance_norm(x)[0], R.layer_norm(x, (4, 5))[0], R.batch_norm(x)[0]]):
        logits = np.zeros(3)
        logits[k] = big
        assert_close(R.response.switchable_norm(x, None, None, logits, logits), reference, atol=1e-9, rtol=1e-9)
