import subprocess
import sys

import numpy as np
import pytest
from helpers import nchw_shapes
from hypothesis import given
from hypothesis import strategies as st

import normlab
from normlab.cli import main
from normlab.explain import draw_cube, explain, first_set_mask


def test_group_norm_example_from_the_issue():
    e = explain("group", "8,64,32,32", num_groups=32)
    assert e.layout.num_statistics == 256 and e.layout.values_per_statistic == 2048
    text = e.text()
    assert "C/G·H·W = 2·32·32 = 2048" in text and "256 means" in text and "N·G = 8·32 = 256" in text
    assert "batch-dependent: no" in text


@pytest.mark.parametrize(
    "name, shape, stats, values, batch_dependent",
    [
        ("bn", "8,64,32,32", 64, 8 * 1024, True),
        ("ln", "8,64,32,32", 8, 64 * 1024, False),
        ("in", "8,64,32,32", 8 * 64, 1024, False),
        ("rms", "4,10,512", 4, 10 * 512, False),
    ],
)
def test_counts_and_batch_dependence(name, shape, stats, values, batch_dependent):
    e = explain(name, shape)
    assert (e.layout.num_statistics, e.layout.values_per_statistic) == (stats, values)
    assert e.layout.batch_dependent == batch_dependent
    assert ("batch-dependent: yes" in e.text()) == batch_dependent


@given(shape=nchw_shapes(min_dims=3, max_dims=5), method=st.sampled_from(["batch", "instance", "group", "layer"]))
def test_cube_masks_are_exactly_the_first_statistic_set(shape, method):
    e = explain(method, shape, num_groups=1 if method == "group" else None)
    n_mask, c_mask, s_mask = first_set_mask(e.layout)
    product = np.einsum("i,j,k->ijk", n_mask, c_mask, s_mask)
    ids = e.layout.statistic_index().reshape(shape[0], shape[1], -1)
    assert (product == (ids == 0)).all()


def test_figure_is_written(tmp_path):
    path = draw_cube(explain("gn", "8,64,32,32", num_groups=32), tmp_path / "cube.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_explain_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown norm 'batchy'"):
        explain("batchy", "2,3")
    with pytest.raises(ValueError, match="comma-separated positive integers"):
        explain("bn", "2,x,3")
    with pytest.raises(ValueError, match="positive divisor"):
        explain("gn", "2,6,4", num_groups=4)
    with pytest.raises(ValueError, match="num_groups applies to grouped methods only, not BatchNorm"):
        explain("bn", "2,6,4", num_groups=2)
    with pytest.raises(ValueError, match="virtual_batch_size applies to Ghost BatchNorm only, not GroupNorm"):
        explain("gn", "2,6,4", virtual_batch_size=2)
    with pytest.raises(ValueError, match="spatial"):
        explain("in", "2,6")


def test_cli_explain_prints_and_draws(tmp_path, capsys):
    assert (
        main(["explain", "group", "--shape", "8,64,32,32", "--groups", "32", "--figure", str(tmp_path / "f.svg")]) == 0
    )
    out = capsys.readouterr().out
    assert "256 means" in out and (tmp_path / "f.svg").exists()


def test_cli_errors_are_clean(capsys):
    assert main(["explain", "gn", "--shape", "8,60,3"]) == 2
    assert "positive divisor" in capsys.readouterr().err


def test_console_script_version_and_help():
    out = subprocess.run([sys.executable, "-m", "normlab.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"normlab {normlab.__version__}"
    for args in ([], ["--help"], ["explain", "--help"], ["norms", "--help"]):
        res = subprocess.run([sys.executable, "-m", "normlab.cli", *args], capture_output=True, text=True)
        assert res.returncode == 0 and "usage: normlab" in res.stdout, args


def test_registry():
    names = normlab.available_norms()
    assert {"batch", "layer", "instance", "group", "rms", "none"} <= set(names)
    assert isinstance(normlab.create_norm("bn", 8), normlab.nn.BatchNorm2d)
    assert isinstance(normlab.create_norm("batch", 8, spatial_dims=0), normlab.nn.BatchNorm1d)
    assert isinstance(normlab.create_norm("layer", 8, spatial_dims=0), normlab.nn.LayerNorm)
    gn = normlab.create_norm("group", 8, num_groups=4)
    assert isinstance(gn, normlab.nn.GroupNorm) and gn.num_groups == 4
    assert normlab.create_norm("layer", 8).num_groups == 1  # the Group Norm paper's LN on feature maps
    assert isinstance(normlab.create_norm("instance", 8, spatial_dims=1), normlab.nn.InstanceNorm1d)
    with pytest.raises(ValueError, match="unknown norm 'nope'; available: batch"):
        normlab.create_norm("nope", 8)
    with pytest.raises(
        ValueError,
        match=r"create_norm\(.instance., spatial_dims=0\): it normalizes each channel over spatial positions",
    ):
        normlab.create_norm("instance", 8, spatial_dims=0)
    with pytest.raises(ValueError, match="spatial_dims must be"):
        normlab.create_norm("batch", 8, spatial_dims=4)
