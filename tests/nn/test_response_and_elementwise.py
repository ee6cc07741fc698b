"""FRN + TLU, EvoNorm-B0/S0, Switchable Normalization, DyT, LRN against the float64 reference; gradcheck."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, gradcheck_module, random_input
from helpers import randomize_parameters as _randomize
from tolerances import FLOAT64 as TOL
from tolerances import FLOAT64_GRAD as GRAD_TOL

import normlab
import normlab.nn as nl
from normlab.reference import response as RR


def _np(t):
    return t.detach().numpy()


@pytest.mark.parametrize("tlu, learnable_eps", [(True, False), (False, False), (True, True)])
def test_frn_matches_reference(tlu, learnable_eps):
    m = _randomize(nl.FilterResponseNorm(3, eps=1e-3, tlu=tlu, learnable_eps=learnable_eps, dtype=torch.float64))
    if learnable_eps:
        with torch.no_grad():
            m.eps_param.copy_(torch.tensor([-0.02, 0.02, -0.02]))  # the absolute value is used
    x = random_input((2, 3, 4, 5), torch.float64, shift=0.3).requires_grad_(True)
    y = m(x)
    dy = random_input(x.shape, torch.float64, seed=2)
    y.backward(dy)
    eps = 0.02 if learnable_eps else m.eps
    y_ref, saved = RR.filter_response_norm(_np(x), _np(m.weight), _np(m.bias), _np(m.tau) if tlu else None, eps)
    assert_close(y, y_ref, **TOL)
    dx, dw, db, dtau = RR.filter_response_norm_backward(dy.numpy(), saved)
    assert_close(x.grad, dx, **GRAD_TOL)
    assert_close(m.weight.grad, dw, **GRAD_TOL)
    assert_close(m.bias.grad, db, **GRAD_TOL)
    if tlu:
        assert_close(m.tau.grad, dtau, **GRAD_TOL)


def test_evonorm_b0_and_s0_match_reference():
    b0 = _randomize(nl.EvoNormB0(4, dtype=torch.float64))
    x = random_input((3, 4, 5, 2), torch.float64, shift=0.5)
    assert_close(b0(x), RR.evonorm_b0(_np(x), _np(b0.weight), _np(b0.bias), _np(b0.v1), b0.eps), **TOL)
    b0.eval()
    assert_close(
        b0(x),
        RR.evonorm_b0(
            _np(x), _np(b0.weight), _np(b0.bias), _np(b0.v1), b0.eps, running_var=_np(b0.running_var), training=False
        ),
        **TOL,
    )
    s0 = _randomize(nl.EvoNormS0(4, num_groups=2, dtype=torch.float64))
    assert_close(s0(x), RR.evonorm_s0(_np(x), _np(s0.weight), _np(s0.bias), _np(s0.v1), 2, s0.eps), **TOL)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nl.EvoNormB0(3, dtype=torch.float64), (4, 3, 5)),
        (lambda: nl.EvoNormS0(4, num_groups=2, dtype=torch.float64), (2, 4, 3, 2)),
        (lambda: nl.SwitchableNorm(3, dtype=torch.float64), (3, 3, 4)),
        (lambda: nl.FilterResponseNorm(3, dtype=torch.float64), (2, 3, 4)),
        (lambda: nl.DynamicTanh(5, dtype=torch.float64), (3, 5)),
        (lambda: nl.LocalResponseNorm(3), (2, 5, 3)),
    ],
)
def test_gradcheck(make, shape):
    m = _randomize(make())
    x = random_input(shape, torch.float64, seed=7, shift=0.2).requires_grad_(True)
    assert gradcheck_module(m, x)


@pytest.mark.parametrize("training", [True, False])
def test_switchable_matches_reference(training):
    m = _randomize(nl.SwitchableNorm(3, dtype=torch.float64))
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([0.3, -0.2, 1.0]))
        m.var_weight.copy_(torch.tensor([-1.0, 0.5, 0.1]))
        m.running_mean.copy_(torch.tensor([0.1, 0.2, -0.3]))
        m.running_var.copy_(torch.tensor([1.5, 0.5, 2.0]))
    m.train(training)
    x = random_input((4, 3, 2, 3), torch.float64, shift=0.4)
    ref = RR.switchable_norm(
        _np(x),
        _np(m.weight),
        _np(m.bias),
        _np(m.mean_weight),
        _np(m.var_weight),
        m.eps,
        _np(m.running_mean),
        _np(m.running_var),
        training,
    )
    assert_close(m(x), ref, **TOL)


@pytest.mark.parametrize("training", [True, False])
def test_switchable_has_no_cancellation_at_large_means(training):
    """Mean 1e4, std 1: E[x²] - E[x]² in float32 loses every digit (it returned NaN); the mixture must match the
    float64 reference to float32 accuracy."""
    m = nl.SwitchableNorm(3)
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([0.3, -0.2, 1.0]))
        m.var_weight.copy_(torch.tensor([-1.0, 0.5, 0.1]))
        m.running_mean.fill_(1e4)
    m.train(training)
    x = (random_input((4, 3, 5, 6), torch.float64, seed=3) + 1e4).float()
    ref = RR.switchable_norm(
        _np(x).astype(np.float64),
        _np(m.weight).astype(np.float64),
        _np(m.bias).astype(np.float64),
        _np(m.mean_weight).astype(np.float64),
        _np(m.var_weight).astype(np.float64),
        m.eps,
        _np(m.running_mean).astype(np.float64),
        _np(m.running_var).astype(np.float64),
        training,
    )
    out = m(x).double()
    assert torch.isfinite(out).all()
    # float32 arithmetic at 1e4 has a unit in the last place of ~1e-3: x - mean carries that much, and so does y
    assert float((out - torch.as_tensor(ref)).abs().max()) < 2e-3


@pytest.mark.parametrize(
    "pick, twin",
    [
        (0, lambda x: F.instance_norm(x)),
        (1, lambda x: F.group_norm(x, 1)),
        (2, lambda x: F.batch_norm(x, None, None, training=True)),
    ],
)
def test_switchable_with_one_hot_weights_is_the_chosen_norm(pick, twin):
    m = nl.SwitchableNorm(3, dtype=torch.float64)
    with torch.no_grad():
        logits = torch.full((3,), -60.0, dtype=torch.float64)
        logits[pick] = 60.0
        m.mean_weight.copy_(logits), m.var_weight.copy_(logits)
    x = random_input((4, 3, 5), torch.float64, shift=1.0)
    torch.testing.assert_close(m(x), twin(x), rtol=1e-9, atol=1e-9)


def test_dyt_matches_reference_and_backward():
    m = _randomize(nl.DynamicTanh([4], dtype=torch.float64))
    x = random_input((3, 2, 4), torch.float64).requires_grad_(True)
    y = m(x)
    dy = random_input(x.shape, torch.float64, seed=1)
    y.backward(dy)
    alpha = float(m.alpha)
    assert_close(y, RR.dynamic_tanh(_np(x), alpha, _np(m.weight), _np(m.bias)), **TOL)
    dx, dalpha, dw, db = RR.dynamic_tanh_backward(dy.numpy(), _np(x), alpha, _np(m.weight))
    assert_close(x.grad, dx, **GRAD_TOL)
    assert abs(float(m.alpha.grad) - dalpha) < 1e-10
    assert_close(m.weight.grad, dw.reshape(-1, 4).sum(0), **GRAD_TOL)
    assert_close(m.bias.grad, db.reshape(-1, 4).sum(0), **GRAD_TOL)
    assert float(nl.DynamicTanh(4).alpha) == 0.5
    conv = nl.DynamicTanh(3, channels_last=False)
    assert conv(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)


def test_lrn_matches_reference_and_torch():
    x = random_input((2, 7, 3, 3), torch.float64).abs() + 0.1
    ours = nl.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0)
    assert_close(ours(x), RR.local_response_norm(_np(x), 3, 0.5, 0.75, 2.0), **TOL)
    torch.testing.assert_close(ours(x), torch.nn.LocalResponseNorm(3, 0.5, 0.75, 2.0)(x))


@pytest.mark.parametrize(
    "make, shape, message",
    [
        (lambda: nl.FilterResponseNorm(3), (4, 3), "at least one spatial dim"),
        (lambda: nl.EvoNormB0(3), (4, 4, 2), "expected input with 3 channels"),
        (lambda: nl.EvoNormB0(3), (1, 3, 1), "more than 1 value per channel"),
        (lambda: nl.SwitchableNorm(3), (4, 3), "at least one spatial dim"),
        (lambda: nl.DynamicTanh(3), (4, 5), "normalized_shape"),
        (lambda: nl.LocalResponseNorm(3), (4, 5), "at least 3 dims"),
    ],
)
def test_bad_input(make, shape, message):
    with pytest.raises(ValueError, match=message):
        make()(torch.randn(shape))
    with pytest.raises(TypeError, match="floating-point"):
        nl.FilterResponseNorm(3)(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_groups"):
        nl.EvoNormS0(6, num_groups=4)


def test_create_norm_with_fused_activation_keeps_state_dict_keys():
    plain, fused = normlab.create_norm("gn", 8, num_groups=4), normlab.create_norm("gn", 8, num_groups=4, act="silu")
    assert list(fused.state_dict()) == list(plain.state_dict())
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(fused(x), F.silu(plain(x)))
    assert isinstance(fused, nl.GroupNorm)
    assert isinstance(normlab.create_norm("none", 8, act="relu"), torch.nn.ReLU)
    with pytest.raises(ValueError, match="act must be"):
        normlab.create_norm("bn", 8, act="swishy")
