"""Batch Renormalization, Ghost BatchNorm, PowerNorm against the float64 reference."""

import numpy as np
import pytest
import torch
from helpers import assert_close, gradcheck_module, random_input
from helpers import randomize_parameters as _randomize
from tolerances import FLOAT64 as TOL
from tolerances import FLOAT64_GRAD as GRAD_TOL

import normlab.nn as nl
from normlab import reference as R
from normlab.reference import batch_variants as RB


@pytest.mark.parametrize("r_max, d_max", [(3.0, 5.0), (1.2, 0.1)])
def test_batch_renorm_matches_reference(r_max, d_max):
    m = _randomize(nl.BatchRenorm2d(3, r_max=r_max, d_max=d_max, momentum=0.3, dtype=torch.float64))
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        m.running_var.copy_(torch.tensor([0.2, 3.0, 1.5]))
    rm, rv = m.running_mean.numpy().copy(), m.running_var.numpy().copy()
    x = random_input((4, 3, 2, 3), torch.float64, shift=0.7, scale=2.0).requires_grad_(True)
    y = m(x)
    dy = random_input(x.shape, torch.float64, seed=5)
    y.backward(dy)
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    y_ref, saved = RB.batch_renorm(x.detach().numpy(), rm, rv, w, b, m.eps, r_max, d_max)
    assert_close(y, y_ref, **TOL)
    dx, dw, db = RB.batch_renorm_backward(dy.numpy(), saved, w)
    assert_close(x.grad, dx, **GRAD_TOL)
    assert_close(m.weight.grad, dw, **GRAD_TOL)
    assert_close(m.bias.grad, db, **GRAD_TOL)
    new_mean, new_var = R.running_stats_update(rm, rv, x.detach().numpy(), 0.3)
    assert_close(m.running_mean, new_mean, **TOL)
    assert_close(m.running_var, new_var, **TOL)


def test_batch_renorm_with_r_max_1_d_max_0_is_batch_norm():
    brn = _randomize(nl.BatchRenorm1d(4, r_max=1.0, d_max=0.0, momentum=0.1, dtype=torch.float64))
    bn = nl.BatchNorm1d(4, momentum=0.1, dtype=torch.float64)
    bn.load_state_dict(brn.state_dict())
    for step in range(3):
        x = random_input((6, 4, 5), torch.float64, seed=step, shift=step)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = brn(xa), bn(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        ya.square().sum().backward(), yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(brn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    brn.eval(), bn.eval()
    torch.testing.assert_close(brn(x), bn(x))


def test_batch_renorm_warmup_schedule():
    m = nl.BatchRenorm2d(2, r_max=3.0, d_max=5.0, warmup=True)
    for step, (r, d) in {0: (1, 0), 5000: (1, 0), 15000: (1.5714, 2.5), 25000: (2.1429, 5.0), 40000: (3, 5)}.items():
        m.num_batches_tracked.fill_(step)
        r_max, d_max = m.limits()
        assert abs(float(r_max) - r) < 1e-3 and abs(float(d_max) - d) < 1e-3, step


def test_batch_renorm_gradcheck_where_r_and_d_are_clipped():
    """r and d carry no gradient by definition, so the gradient is the true derivative only where both are clipped:
    running statistics far from the batch's (sigma_B/sigma ~ 0.1 < 1/r_max, |mu_B - mu|/sigma ~ 1 > d_max)."""
    m = _randomize(nl.BatchRenorm1d(3, r_max=1.05, d_max=0.1, dtype=torch.float64))
    with torch.no_grad():
        m.running_mean.fill_(10.0), m.running_var.fill_(100.0)
    x = random_input((5, 3), torch.float64).requires_grad_(True)
    assert gradcheck_module(m, x)  # r and d depend on the running statistics: fixed across evaluations


def test_ghost_batch_norm_matches_reference():
    m = _randomize(nl.GhostBatchNorm1d(3, virtual_batch_size=4, dtype=torch.float64))
    x = random_input((10, 3, 2), torch.float64, shift=1.0).requires_grad_(True)  # chunks 4, 4, 2
    y = m(x)
    dy = random_input(x.shape, torch.float64, seed=3)
    y.backward(dy)
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    y_ref, saves = RB.ghost_batch_norm(x.detach().numpy(), 4, w, b)
    assert_close(y, y_ref, **TOL)
    dx, dw, db = RB.ghost_batch_norm_backward(dy.numpy(), saves, 4)
    assert_close(x.grad, dx, **GRAD_TOL)
    assert_close(m.weight.grad, dw, **GRAD_TOL)
    assert int(m.num_batches_tracked) == 3
    m.eval()
    assert m(x).shape == x.shape
    assert list(m.state_dict()) == list(torch.nn.BatchNorm1d(3).state_dict())


def test_power_norm_forward_and_documented_backward():
    m = _randomize(nl.PowerNorm(3, alpha_fwd=0.8, alpha_bkw=0.7, dtype=torch.float64))
    phi0 = m.running_phi.numpy().copy()
    x = random_input((6, 3, 4), torch.float64, shift=0.5).requires_grad_(True)
    y = m(x)
    y_ref, phi1 = RB.power_norm(
        x.detach().numpy(), phi0, m.weight.detach().numpy(), m.bias.detach().numpy(), m.eps, 0.8
    )
    assert_close(y, y_ref, **TOL)
    assert_close(m.running_phi, phi1, **TOL)
    dy = random_input(x.shape, torch.float64, seed=4)
    y.backward(dy)
    # The approximate backward (Shen et al., Alg. 1): (g - nu_prev * x_hat) / sqrt(phi_prev + eps), nu_prev = 0 here.
    g = dy.numpy() * m.weight.detach().numpy()[None, :, None]
    x_hat = x.detach().numpy() / np.sqrt(phi0[None, :, None] + m.eps)
    assert_close(x.grad, g / np.sqrt(phi0[None, :, None] + m.eps), **GRAD_TOL)
    gamma = (g * x_hat).mean(axis=(0, 2))
    assert_close(m.running_nu, 0.3 * gamma, **TOL)
    m.eval()
    assert_close(
        m(x),
        x.detach().numpy() / np.sqrt(phi1[None, :, None] + m.eps) * m.weight.detach().numpy()[None, :, None]
        + m.bias.detach().numpy()[None, :, None],
        **TOL,
    )


@pytest.mark.parametrize(
    "make, shape, message",
    [
        (lambda: nl.BatchRenorm2d(3), (2, 3, 4), "expected 4D input"),
        (lambda: nl.BatchRenorm1d(3), (1, 3), "more than 1 value per channel"),
        (lambda: nl.GhostBatchNorm1d(3), (4, 5), "expected input with 3 channels"),
        (lambda: nl.PowerNorm(3), (4, 5), "expected input with 3 channels"),
    ],
)
def test_bad_input(make, shape, message):
    with pytest.raises(ValueError, match=message):
        make()(torch.randn(shape))
    with pytest.raises(ValueError):
        nl.BatchRenorm1d(3, r_max=0.5)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        nl.GhostBatchNorm1d(3, virtual_batch_size=1)
