"""The verdict criterion, and every study's analysis on its own real (tiny) runs."""

import math

import pytest

from normlab.lab.study import Options, compare, not_greater


def test_compare_outcomes():
    assert compare("c", [10, 10.2, 9.9], [5, 5.1, 4.8], "a", "b").outcome == "reproduced"
    assert compare("c", [5, 5.1, 4.8], [10, 10.2, 9.9], "a", "b").outcome == "contradicted"
    assert compare("c", [5, 7, 3], [5.5, 3, 6], "a", "b").outcome == "not reproduced at this scale"
    assert compare("c", [5], [3], "a", "b").outcome == "inconclusive"
    assert compare("c", [], [3, 4], "a", "b").outcome == "inconclusive"
    # min_effect: a consistent but tiny difference does not count
    assert compare("c", [1.001, 1.001], [1.0, 1.0], "a", "b", min_effect=0.01).outcome == "not reproduced at this scale"


def test_not_greater_flips_only_significant_outcomes():
    assert not_greater("c", [5, 5.1], [5.05, 5.0], "a", "b").outcome == "reproduced"
    assert not_greater("c", [9, 9.1], [5.05, 5.0], "a", "b").outcome == "contradicted"
    assert not_greater("c", [9], [5], "a", "b").outcome == "inconclusive"


def test_options_seeds():
    assert Options().seed_list() == [0, 1]
    assert Options(full=True).seed_list() == list(range(5))
    assert Options(seeds=3).seed_list() == [0, 1, 2]
