"""PowerNorm's measure (training/probes.BatchStatRecorder.fluctuation): how far each step's batch statistics stray
from the running statistics BatchNorm keeps; step-to-step noise counts, a slow drift of the statistics does not."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.lab.metrics import BATCH_MEAN_FLUCTUATION, BATCH_VAR_FLUCTUATION
from normlab.lab.training.probes import BatchStatRecorder


def _feed(recorder: BatchStatRecorder, layer: nn.Module, scales: list[float], shift: float = 0.0) -> None:
    g = torch.Generator().manual_seed(0)
    for s in scales:
        layer(shift + s * torch.randn(64, 8, generator=g))


def _recorder() -> tuple[BatchStatRecorder, nn.Module]:
    layer = nn.BatchNorm1d(8)
    return BatchStatRecorder(layer, channel_dim=1), layer


def test_noise_of_batch_statistics_is_measured_against_the_running_ones() -> None:
    """Stationary inputs, batch 64: the batch variance's relative deviation from its running average has an
    expected rms of about sqrt(2/63) (a chi-square's relative std) times sqrt(1 + m/(2-m)) (the running average's
    own noise, momentum m = 0.1); the batch mean's deviation in running stds about sqrt(1/64) times the same."""
    recorder, layer = _recorder()
    _feed(recorder, layer, [3.0] * 2000, shift=5.0)
    got = recorder.fluctuation(skip=20)
    inflation = math.sqrt(1 + 0.1 / 1.9)
    assert got[BATCH_VAR_FLUCTUATION] == pytest.approx(math.sqrt(2 / 63) * inflation, rel=0.1)
    assert got[BATCH_MEAN_FLUCTUATION] == pytest.approx(math.sqrt(1 / 64) * inflation, rel=0.1)


def test_a_slow_drift_is_not_fluctuation() -> None:
    """Statistics that drift over the run (scale x e over 1000 steps) but barely move from one step to the next read
    as the noise of stationary ones, although their std over the whole run is far larger."""
    drifting, layer = _recorder()
    _feed(drifting, layer, [3.0 * math.exp(t / 1000) for t in range(1000)])
    steady, layer = _recorder()
    _feed(steady, layer, [3.0] * 1000)
    variances = torch.stack(drifting.vars[20:])
    assert float((variances.std(0) / variances.mean(0)).mean()) > 0.5  # the drift, over the whole run
    assert drifting.fluctuation(skip=20)[BATCH_VAR_FLUCTUATION] == pytest.approx(
        steady.fluctuation(skip=20)[BATCH_VAR_FLUCTUATION], rel=0.1
    )


def test_scale_free_and_training_mode_only() -> None:
    small, layer_small = _recorder()
    _feed(small, layer_small, [1.0] * 200)
    large, layer_large = _recorder()
    _feed(large, layer_large, [1000.0] * 200)
    assert small.fluctuation(skip=20)[BATCH_VAR_FLUCTUATION] == pytest.approx(
        large.fluctuation(skip=20)[BATCH_VAR_FLUCTUATION], rel=1e-6
    )
    layer_small.eval()
    layer_small(torch.randn(4, 8))
    assert len(small.vars) == 200
    assert small.fluctuation(skip=199) == {}
