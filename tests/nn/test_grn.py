"""Global Response Normalization: the module against the float64 reference (forward, input and parameter
gradients), the reference's backward against finite differences, the ConvNeXt V2 code's channels-last form, and
the method reachable by name in explain and the lab with no edit outside its files and its record."""

import pytest
import torch
from helpers import assert_close, nchw_shapes, numeric_grad, random_input
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import FINITE_DIFFERENCE, FLOAT64, FLOAT64_GRAD

import normlab.nn as nl
from normlab import reference as R
from normlab.cli import main


def _module(c, seed, dtype=torch.float64):
    grn = nl.GlobalResponseNorm(c, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        grn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        grn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return grn


@settings(max_examples=40, deadline=None)
@given(shape=nchw_shapes(min_dims=3, max_dims=5), seed=st.integers(0, 1000))
def test_module_matches_reference_forward_and_backward(shape, seed):
    grn = _module(shape[1], seed)
    x = random_input(shape, torch.float64, seed=seed, scale=2.0, shift=0.5).requires_grad_(True)
    dy = random_input(shape, torch.float64, seed=seed + 1)
    y = grn(x)
    y.backward(dy)
    w, b = grn.weight.detach().numpy(), grn.bias.detach().numpy()
    assert_close(y, R.response.global_response_norm(x.detach().numpy(), w, b), **FLOAT64)
    dx, dw, db = R.response.global_response_norm_backward(dy.numpy(), x.detach().numpy(), w)
    assert_close(x.grad, dx, **FLOAT64_GRAD)
    assert_close(grn.weight.grad, dw, **FLOAT64_GRAD)
    assert_close(grn.bias.grad, db, **FLOAT64_GRAD)


@pytest.mark.parametrize("shape", [(2, 4, 5), (3, 4, 3, 3)])
def test_reference_backward_matches_finite_differences(shape, rng):
    x, dy = rng.normal(size=shape) * 2, rng.normal(size=shape)
    w, b = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dx, dw, db = R.response.global_response_norm_backward(dy, x, w)

    def loss():
        return float((R.response.global_response_norm(x, w, b) * dy).sum())

    fd = dict(atol=FINITE_DIFFERENCE["atol"], rtol=FINITE_DIFFERENCE["rtol"])
    for analytic, a in ((dx, x), (dw, w), (db, b)):
        assert_close(analytic, numeric_grad(loss, a, FINITE_DIFFERENCE["step"]), **fd)


def test_matches_convnext_v2_channels_last_code():
    """ConvNeXt V2's GRN is written for (N, H, W, C): torch.norm over (1, 2), mean over the last dim."""
    grn = _module(6, seed=3, dtype=torch.float32)
    x = random_input((2, 6, 7, 5), seed=4)
    nhwc = x.permute(0, 2, 3, 1)
    gx = torch.norm(nhwc, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    expected = grn.weight * (nhwc * nx) + grn.bias + nhwc
    torch.testing.assert_close(grn(x), expected.permute(0, 3, 1, 2))


def test_identity_at_init_and_standard_module_parts():
    grn = nl.GlobalResponseNorm(4)
    x = random_input((2, 4, 3, 3))
    assert torch.equal(grn(x), x) and repr(grn) == "GlobalResponseNorm(4, eps=1e-06)"
    with pytest.raises(ValueError, match="at least one spatial dim"):
        grn(torch.randn(2, 4))
    with pytest.raises(ValueError, match="expected input with 4 channels"):
        grn(torch.randn(2, 3, 5))


def test_reachable_by_name_in_explain_and_the_lab(tmp_path, capsys):
    assert main(["explain", "grn", "--shape", "8,64,16,16"]) == 0
    out = capsys.readouterr().out
    assert "Global Response Normalization" in out and "512 mean squares" in out and "batch-dependent: no" in out
    assert (
        main(
            [
                "compare",
                "--study",
                "contrast",
                "--norms",
                "grn",
                "--seeds",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--workers",
                "1",
                "--budget",
                "0.1",
            ]
        )
        == 0
    )
    assert "runs: 0 already stored" in capsys.readouterr().out
    rows = (tmp_path / "results.csv").read_text()
    assert ",grn," in rows
