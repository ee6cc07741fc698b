"""LayerNorm2d / RMSNorm2d against the float64 reference (forward and gradients), timm's LayerNorm2d, and the
channels_last path (no copy: ATen normalizes the contiguous NHWC view)."""

import pytest
import torch
from helpers import assert_close, nchw_shapes, random_input
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import FLOAT64, FLOAT64_GRAD

import normlab.nn as nl
from normlab import reference as R


@settings(max_examples=40, deadline=None)
@given(
    shape=nchw_shapes(min_dims=3, max_dims=5), rms=st.booleans(), channels_last=st.booleans(), seed=st.integers(0, 1000)
)
def test_matches_reference_forward_and_backward(shape, rms, channels_last, seed):
    c = shape[1]
    module = (nl.RMSNorm2d if rms else nl.LayerNorm2d)(c, dtype=torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(random_input(p.shape, torch.float64, seed=seed + 5, scale=0.5, shift=1.0))
    x = random_input(shape, torch.float64, seed=seed, scale=2.0, shift=0.5)
    if channels_last and len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    dy = random_input(shape, torch.float64, seed=seed + 1)
    y = module(x)
    y.backward(dy)
    w = module.weight.detach().numpy()
    if rms:
        y_ref, saved = R.rms_norm_2d(x.detach().numpy(), w, module.eps)
    else:
        y_ref, saved = R.layer_norm_2d(x.detach().numpy(), w, module.bias.detach().numpy(), module.eps)
    dx, dw, db = R.backward(dy.numpy(), saved)
    assert_close(y, y_ref, **FLOAT64)
    assert_close(x.grad, dx, **FLOAT64_GRAD)
    assert_close(module.weight.grad, dw, **FLOAT64_GRAD)
    if not rms:
        assert_close(module.bias.grad, db, **FLOAT64_GRAD)


@pytest.mark.parametrize("cls", [nl.LayerNorm2d, nl.RMSNorm2d])
def test_channels_last_in_channels_last_out_without_a_copy(cls):
    x = random_input((2, 16, 7, 9)).contiguous(memory_format=torch.channels_last)
    assert x.movedim(1, -1).is_contiguous()  # what ATen receives: already contiguous
    y = cls(16)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, cls(16)(x.contiguous()))


def test_matches_timms_layer_norm_2d_and_its_state_dict():
    timm_layers = pytest.importorskip("timm.layers")
    theirs = timm_layers.LayerNorm2d(8)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours = nl.LayerNorm2d(8)
    ours.load_state_dict(theirs.state_dict())
    x = random_input((2, 8, 5, 6), shift=2.0)
    torch.testing.assert_close(ours(x), theirs(x))
    assert isinstance(ours, torch.nn.LayerNorm)


def test_bad_input():
    with pytest.raises(ValueError, match="expected input with 8 channels"):
        nl.LayerNorm2d(8)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="at least 3 dims"):
        nl.RMSNorm2d(8)(torch.randn(2, 8))
