import math

import numpy as np
import pytest
from helpers import nchw_shapes
from hypothesis import given
from hypothesis import strategies as st

from normlab.reference import batch_layout, group_layout, instance_layout, layer_layout


@pytest.mark.parametrize(
    "layout, stats, values",
    [
        (batch_layout((8, 64, 32, 32)), 64, 8 * 32 * 32),
        (instance_layout((8, 64, 32, 32)), 8 * 64, 32 * 32),
        (group_layout((8, 64, 32, 32), 32), 8 * 32, 2 * 32 * 32),
        (layer_layout((8, 64, 32, 32), (64, 32, 32)), 8, 64 * 32 * 32),
        (layer_layout((4, 10, 512), (512,)), 40, 512),
    ],
)
def test_counts_match_the_group_norm_paper(layout, stats, values):
    assert layout.num_statistics == stats
    assert layout.values_per_statistic == values
    assert stats * values == math.prod(layout.input_shape)


@given(shape=nchw_shapes(min_dims=2, max_dims=5))
def test_statistic_index_partitions_the_input(shape):
    for layout in (batch_layout(shape), instance_layout(shape), group_layout(shape, 1)):
        ids = layout.statistic_index()
        counts = np.bincount(ids.ravel(), minlength=layout.num_statistics)
        assert ids.shape == tuple(shape)
        assert (counts == layout.values_per_statistic).all()


def test_statistic_index_follows_the_definitions():
    ids = batch_layout((2, 3, 4)).statistic_index()
    assert (ids == np.arange(3)[None, :, None]).all()  # BN: the channel
    ids = instance_layout((2, 3, 4)).statistic_index()
    assert (ids == (np.arange(2)[:, None, None] * 3 + np.arange(3)[None, :, None])).all()  # IN: (n, c)
    ids = group_layout((2, 4, 3), 2).statistic_index()
    assert (ids[0, :2] == 0).all() and (ids[0, 2:] == 1).all() and (ids[1, :2] == 2).all()  # GN: (n, g)


@pytest.mark.parametrize("groups", [0, 3, -1])
def test_group_layout_rejects_non_divisors(groups):
    with pytest.raises(ValueError, match="num_groups"):
        group_layout((2, 4, 3), groups)


def test_layer_layout_rejects_mismatched_trailing_shape():
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_layout((2, 4, 3), (4,))


@given(shape=nchw_shapes(min_dims=2, max_dims=4), k=st.integers(1, 3))
def test_batch_dependence_only_for_batch_norm(shape, k):
    k = min(k, len(shape) - 1)
    assert batch_layout(shape).batch_dependent
    assert not instance_layout(shape).batch_dependent
    assert not group_layout(shape, 1).batch_dependent
    assert not layer_layout(shape, shape[len(shape) - k :]).batch_dependent
