"""The verdict criterion (paired t-test over seeds), the convergence check, and the seed options."""

import pytest

from normlab.lab.store import RunRecord
from normlab.lab.study import (
    NOT_TRAINED, Options, Sample, Target, check_training, compare, converged, difference_test, not_greater,
)  # fmt: skip


def test_compare_outcomes():
    assert compare("c", [10, 10.2, 9.9], [5, 5.1, 4.8], "a", "b").outcome == "reproduced"
    assert compare("c", [5, 5.1, 4.8], [10, 10.2, 9.9], "a", "b").outcome == "contradicted"
    assert compare("c", [5, 7, 3], [5.5, 3, 6], "a", "b").outcome == "not reproduced at this scale"
    assert compare("c", [5], [3], "a", "b").outcome == "inconclusive"
    assert compare("c", [], [3, 4], "a", "b").outcome == "inconclusive"
    # min_effect: a consistent but tiny difference does not count
    assert compare("c", [1.001, 1.002], [1.0, 1.0], "a", "b", min_effect=0.01).outcome == "not reproduced at this scale"


def test_pairing_by_seed_finds_what_unpaired_spread_hides():
    """Seeds move both norms together (a shared initialization and data order): the paired differences are
    consistent even though each side's spread is wide."""
    hi = Sample([80.0, 90.0, 70.0, 85.0, 75.0], seeds=[0, 1, 2, 3, 4])
    lo = Sample([78.5, 88.7, 68.4, 83.6, 73.5], seeds=[0, 1, 2, 3, 4])
    assert compare("c", list(hi), list(lo), "a", "b").outcome == "not reproduced at this scale"  # unpaired
    verdict = compare("c", hi, lo, "a", "b")
    assert verdict.outcome == "reproduced" and "paired over 5 seeds" in verdict.evidence
    # pairing follows the seeds, not the list order
    shuffled = Sample([73.5, 68.4, 88.7, 83.6, 78.5], seeds=[4, 2, 1, 3, 0])
    assert difference_test(hi, shuffled)[0] == pytest.approx(1.46)


def test_t_critical_value_is_the_stated_one():
    effect, se, crit, how = difference_test(Sample([1.0, 2.0, 3.0], [0, 1, 2]), Sample([0.0, 0.0, 0.0], [0, 1, 2]))
    assert crit == pytest.approx(4.3027, abs=1e-3) and how == "paired over 3 seeds"


def test_untrained_runs_make_a_comparison_inconclusive():
    hi = Sample([10, 10.2, 9.9], [0, 1, 2], untrained=1)
    lo = Sample([5, 5.1, 4.8], [0, 1, 2])
    assert compare("c", hi, lo, "a", "b").outcome == NOT_TRAINED
    assert not_greater("c", hi, lo, "a", "b").outcome == NOT_TRAINED


def test_not_greater_flips_only_significant_outcomes():
    assert not_greater("c", [5, 5.1], [5.05, 5.0], "a", "b").outcome == "reproduced"
    assert not_greater("c", [9, 9.1], [5.05, 5.0], "a", "b").outcome == "contradicted"
    assert not_greater("c", [9], [5], "a", "b").outcome == "inconclusive"


def test_convergence_is_a_plateau():
    assert converged([2.3, 1.0, 0.5, 0.3, 0.25, 0.24, 0.235, 0.232, 0.231, 0.23])
    assert not converged([2.3, 2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6, 0.4])  # still falling
    assert converged([2.3, 2.31, 2.29, 2.3, 2.3, 2.3])  # never learned: stuck is a result (BN at batch 1)
    assert not converged([2.3, 2.3, 2.3, 2.3, 2.2, 1.5])  # took off at the end
    assert not converged([2.3, 1.0])  # too short to tell


def _record(norm, seed, acc, loss):
    config = {"study": "s", "task": "classify", "norm": norm, "seed": seed}
    return RunRecord(f"{norm}{seed}", "s", "done", config, {"test_acc": acc, "diverged": 0.0}, {"loss": loss}, "", 1.0)


def test_training_check_needs_the_target_and_reports_unconverged_settings():
    flat = [2.3, 1.0, 0.5, 0.3, 0.25, 0.24, 0.235, 0.232, 0.231, 0.23]
    falling = [2.3, 2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6, 0.4]
    records = [_record("batch", s, 0.95, flat) for s in range(3)] + [_record("group", s, 0.5, falling) for s in range(3)]
    check = check_training(Target("test_acc", 0.90), records)
    assert check.met and check.best == "norm=batch: 95.0%" and check.converged == 1 and check.settings == 2
    assert check.unconverged == ["norm=group"]
    assert not check_training(Target("test_acc", 0.97), records).met
    assert "NOT met" in check_training(Target("test_acc", 0.97), records).text()


def test_a_setting_is_judged_by_its_mean_curve():
    flat = [2.3, 1.0, 0.5, 0.3, 0.25, 0.24, 0.235, 0.232, 0.231, 0.23]
    wobble = [2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.0, 0.9]  # one slow seed: alone, not a plateau
    assert not converged(wobble)
    records = [_record("batch", s, 0.95, c) for s, c in enumerate([flat, flat, flat, flat, wobble])]
    assert check_training(Target("test_acc", 0.9), records).unconverged == []


def test_options_seeds():
    assert Options().seed_list() == [0, 1, 2, 3, 4]
    assert Options(full=True).seed_list() == list(range(10))
    assert Options(seeds=3).seed_list() == [0, 1, 2]
    assert Options(seeds=3, first_seed=10).seed_list() == [10, 11, 12]
    assert Options(first_seed=5).seed_list(default=3) == [5, 6, 7]
