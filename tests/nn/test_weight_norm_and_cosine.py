import numpy as np
import pytest
import torch
from helpers import assert_close, random_input
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm

import normlab.functional as NF
import normlab.nn as nl
from normlab import reference as R


@pytest.mark.parametrize("make", [lambda: nn.Linear(5, 4), lambda: nn.Conv2d(3, 4, 3)])
@pytest.mark.parametrize("dim", [0, 1, None, -1, -2])
def test_weight_norm_matches_torch_and_shares_checkpoints(make, dim, tmp_path):
    torch.manual_seed(0)
    ours, theirs = nl.weight_norm(make(), dim=dim), torch_weight_norm(make(), dim=dim)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key in ("parametrizations.weight.original0", "parametrizations.weight.original1"):
        assert ours.state_dict()[key].shape == theirs.state_dict()[key].shape
    torch.save(theirs.state_dict(), tmp_path / "t.pt")
    ours.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    x = torch.randn(2, 5) if isinstance(ours, nn.Linear) else torch.randn(2, 3, 6, 6)
    y_o, y_t = ours(x), theirs(x)
    torch.testing.assert_close(y_o, y_t)
    y_o.square().sum().backward(), y_t.square().sum().backward()
    g_o = ours.parametrizations.weight.original0.grad
    torch.testing.assert_close(g_o, theirs.parametrizations.weight.original0.grad)
    torch.save(ours.state_dict(), tmp_path / "o.pt")
    theirs.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))


def test_weight_norm_matches_reference():
    layer = nl.weight_norm(nn.Linear(6, 3).double())
    g = layer.parametrizations.weight.original0
    v = layer.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.linspace(0.5, 2, 3, dtype=torch.float64)[:, None])
    w = layer.weight
    assert_close(w, R.weight_norm(v.detach().numpy(), g.detach().numpy(), 0), atol=1e-12, rtol=1e-12)
    dw = np.random.default_rng(0).normal(size=w.shape)
    w.backward(torch.tensor(dw))
    dv, dg = R.weight_norm_backward(dw, v.detach().numpy(), g.detach().numpy(), 0)
    assert_close(v.grad, dv, atol=1e-12, rtol=1e-10)
    assert_close(g.grad, dg, atol=1e-12, rtol=1e-10)


def test_weight_norm_initially_preserves_the_weight_and_accepts_legacy_keys():
    layer = nn.Linear(5, 4)
    w = layer.weight.detach().clone()
    nl.weight_norm(layer)
    torch.testing.assert_close(layer.weight, w)
    legacy = {"weight_g": torch.ones(4, 1), "weight_v": torch.randn(4, 5), "bias": torch.zeros(4)}
    layer.load_state_dict(legacy)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(4))


def test_weight_norm_bad_arguments():
    with pytest.raises(ValueError, match="has no parameter named 'kernel'"):
        nl.weight_norm(nn.Linear(3, 2), name="kernel")
    with pytest.raises(ValueError, match="dim must be None or in"):
        nl.weight_norm(nn.Linear(3, 2), dim=2)


@pytest.mark.parametrize("centered", [False, True])
def test_cosine_linear_matches_reference(centered):
    layer = nl.CosineLinear(7, 4, centered, dtype=torch.float64)
    x = random_input((5, 7), torch.float64, shift=1.0).requires_grad_(True)
    y = layer(x)
    dy = random_input((5, 4), torch.float64, seed=9)
    y.backward(dy)
    w = layer.weight.detach().numpy()
    assert_close(y, R.cosine_linear(x.detach().numpy(), w, centered), atol=1e-12, rtol=1e-10)
    dx, dw = R.cosine_linear_backward(dy.numpy(), x.detach().numpy(), w, centered)
    assert_close(x.grad, dx, atol=1e-12, rtol=1e-9)
    assert_close(layer.weight.grad, dw, atol=1e-12, rtol=1e-9)
    assert float(y.abs().max()) <= 1.0


def test_cosine_linear_zero_input_gives_zero_not_nan():
    layer = nl.CosineLinear(4, 3, scale=10.0)
    x = torch.zeros(2, 4, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, torch.zeros(2, 3))
    y.sum().backward()
    assert x.grad.isfinite().all() and layer.weight.grad.isfinite().all() and layer.scale.grad.isfinite()
    assert set(dict(layer.named_parameters())) == {"weight", "scale"}


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize(
    "cls, shape, kw",
    [
        ("CosineConv1d", (2, 4, 9), dict(kernel_size=3, padding=1)),
        ("CosineConv2d", (2, 4, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
        ("CosineConv2d", (2, 4, 7, 6), dict(kernel_size=(2, 3), dilation=2, groups=2)),
    ],
)
def test_cosine_conv_is_cosine_between_filter_and_patch(cls, shape, kw, centered):
    layer = getattr(nl, cls)(4, 6, centered=centered, dtype=torch.float64, **kw)
    x = random_input(shape, torch.float64, shift=0.5)
    y = layer(x)
    # Independent check: unfold the patches and take the cosine with each filter of the patch's group.
    groups = layer.groups
    if cls == "CosineConv1d":
        x4, w4 = x.unsqueeze(2), layer.weight.unsqueeze(2)
        k, d, p, s = (1,) + layer.kernel_size, (1,) + layer.dilation, (0,) + layer.padding, (1,) + layer.stride
    else:
        x4, w4 = x, layer.weight
        k, d, p, s = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    patches = torch.nn.functional.unfold(x4, k, d, p, s)  # (N, C*K, L)
    per_group = patches.shape[1] // groups
    out_per_group = layer.out_channels // groups
    expected = []
    for g in range(groups):
        pg = patches[:, g * per_group : (g + 1) * per_group].transpose(1, 2).numpy()
        wg = w4[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, -1).detach().numpy()
        expected.append(R.cosine_linear(pg, wg, centered))
    expected = np.concatenate(expected, axis=-1).transpose(0, 2, 1).reshape(y.shape)
    assert_close(y, expected, atol=1e-10, rtol=1e-8)


def test_cosine_layers_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"input's last dim must equal in_features \(4\)"):
        nl.CosineLinear(4, 2)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="input has 3 channels, expected 4"):
        nl.CosineConv2d(4, 2, 3)(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="groups"):
        nl.CosineConv2d(4, 3, 3, groups=2)
    with pytest.raises(TypeError, match="floating-point"):
        NF.cosine_linear(torch.ones(2, 4, dtype=torch.long), torch.randn(3, 4))
