"""Weight Standardization, Spectral Normalization, FrozenBatchNorm2d."""

import numpy as np
import pytest
import torch
from helpers import assert_close, random_input
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import normlab.nn as nl
from normlab import reference as R


def test_std_conv_matches_reference_and_keeps_conv_state_dict():
    conv = nl.StdConv2d(3, 4, 3, padding=1, eps=1e-5).double()
    w_hat, saved = R.weight_standardization(conv.weight.detach().numpy(), 1e-5)
    x = random_input((2, 3, 5, 5), torch.float64)
    expected = torch.nn.functional.conv2d(x, torch.from_numpy(w_hat), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    y = conv(x)
    dy = random_input(y.shape, torch.float64, seed=2)
    y.backward(dy)
    conv_w_hat = torch.from_numpy(w_hat).requires_grad_(True)
    torch.nn.functional.conv2d(x, conv_w_hat, conv.bias, padding=1).backward(dy)
    assert_close(
        conv.weight.grad, R.weight_standardization_backward(conv_w_hat.grad.numpy(), saved), atol=1e-10, rtol=1e-9
    )
    assert list(conv.state_dict()) == list(torch.nn.Conv2d(3, 4, 3).state_dict())
    assert nl.StdConv1d(2, 3, 3)(torch.randn(1, 2, 7)).shape == (1, 3, 5)


def test_weight_standardization_backward_is_exact():
    w = np.random.default_rng(0).normal(size=(3, 2, 2))
    dw_hat = np.random.default_rng(1).normal(size=w.shape)
    _, saved = R.weight_standardization(w, 1e-6)
    analytic = R.weight_standardization_backward(dw_hat, saved)
    numeric = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[i] += 1e-6
        wm[i] -= 1e-6
        numeric[i] = (
            (R.weight_standardization(wp, 1e-6)[0] - R.weight_standardization(wm, 1e-6)[0]) * dw_hat
        ).sum() / 2e-6
    np.testing.assert_allclose(analytic, numeric, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: torch.nn.Linear(6, 4), lambda: torch.nn.Conv2d(3, 5, 3)])
def test_spectral_norm_matches_torch_and_reference(make, tmp_path):
    torch.manual_seed(0)
    ours = nl.spectral_norm(make().double())
    torch.manual_seed(0)
    theirs = torch_spectral_norm(make().double())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for _ in range(3):
        torch.testing.assert_close(ours.weight, theirs.weight)
    torch.save(theirs.state_dict(), tmp_path / "sn.pt")
    ours.load_state_dict(torch.load(tmp_path / "sn.pt", weights_only=True))
    ours.eval()
    for _ in range(30):  # power iteration converges to the exact largest singular value
        ours.train()
        _ = ours.weight  # each access runs one power iteration
    original = ours.parametrizations.weight.original.detach().numpy()
    assert_close(ours.weight, R.spectral_norm(original), atol=1e-6, rtol=1e-5)


def test_spectral_norm_bad_arguments():
    with pytest.raises(ValueError, match="no parameter named 'kernel'"):
        nl.spectral_norm(torch.nn.Linear(3, 2), name="kernel")
    with pytest.raises(ValueError, match="n_power_iterations"):
        nl.spectral_norm(torch.nn.Linear(3, 2), n_power_iterations=0)


def test_frozen_batch_norm_loads_a_batch_norm_checkpoint_and_matches_eval():
    bn = torch.nn.BatchNorm2d(4)
    bn(torch.randn(8, 4, 3, 3) * 2 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    frozen = nl.FrozenBatchNorm2d(4)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    torch.testing.assert_close(nl.FrozenBatchNorm2d.from_batch_norm(bn)(x), bn(x))
    assert not list(frozen.parameters())
    with pytest.raises(ValueError, match=r"expected input \(N, 4, H, W\)"):
        frozen(torch.randn(2, 3, 5, 5))
