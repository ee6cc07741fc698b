"""The verdict criterion (paired t-test over seeds), verdicts settled over budgets, the convergence check, and the
seed options."""

from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from normlab.lab.judging.study import (
    NOT_TRAINED,
    Options,
    Sample,
    Target,
    check_training,
    compare,
    converged,
    difference_test,
    not_greater,
    withheld,
)
from normlab.lab.judging.verdicts import MAX_DOUBLINGS, Outcome, check, settle
from normlab.lab.store import RunRecord


def test_compare_outcomes():
    assert compare("c", [10, 10.2, 9.9], [5, 5.1, 4.8], "a", "b").outcome == "reproduced"
    assert compare("c", [5, 5.1, 4.8], [10, 10.2, 9.9], "a", "b").outcome == "contradicted"
    assert compare("c", [5, 7, 3], [5.5, 3, 6], "a", "b").outcome == "not reproduced at this scale"
    assert compare("c", [5], [3], "a", "b").outcome == "inconclusive"
    assert compare("c", [], [3, 4], "a", "b").outcome == "inconclusive"
    # min_effect: a consistent but tiny difference does not count
    assert compare("c", [1.001, 1.002], [1.0, 1.0], "a", "b", min_effect=0.01).outcome == "not reproduced at this scale"


def _errors(accuracies: list[int]) -> Sample:
    """Test errors in points as a study computes them, from accuracies counted over 1000 test examples."""
    return Sample([100 * (1 - a / 1000) for a in accuracies], range(len(accuracies)))


def test_a_difference_equal_to_the_threshold_does_not_exceed_it():
    """BN's error is lower than GN's by exactly 0.5 points over 5 seeds (errors move in steps of 0.1 points, their
    mean in steps of 0.02), which float arithmetic rounds to -0.5000000000000004: at min_effect 0.5 the difference
    is not more than the threshold, so it counts neither way (session 15's 'GN beats BN at batch 2' at 4T read
    'contradicted' from such a rounding)."""
    bn, gn = _errors([968, 966, 972, 969, 982]), _errors([964, 962, 968, 963, 975])
    effect, se, crit, _ = difference_test(bn, gn)
    assert effect < -0.5 and crit * se < 0.5  # the float mean is past the threshold; the t-test would count it
    v = compare("GN beats BN", bn, gn, "BN error", "GN error", min_effect=0.5)
    assert v.outcome is Outcome.NOT_REPRODUCED and v.margin == 0.5
    assert v.outcome_for(-0.5) is Outcome.NOT_REPRODUCED and v.outcome_for(-0.52) is Outcome.CONTRADICTED
    assert v.outcome_for(0.5 + 1e-13) is Outcome.NOT_REPRODUCED and v.outcome_for(0.5 + 1e-6) is Outcome.REPRODUCED
    # a "not greater" claim: a difference equal to its bound is at most the bound
    same = _errors([970, 970, 970, 970, 970])
    n = not_greater("as good as", _errors([965, 965, 965, 965, 965]), same, "a", "b", min_effect=0.5)
    assert n.bound == pytest.approx(0.5) and n.outcome is Outcome.REPRODUCED  # +0.5 exactly, no spread


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(900, 1000), st.integers(900, 1000)), min_size=2, max_size=6),
    min_effect=st.sampled_from(["0.1", "0.3", "0.5", "1.5"]),
)
def test_outcomes_are_those_of_exact_arithmetic(pairs, min_effect):
    """Errors from counted accuracies: the outcome is the one the exact (rational) mean difference gives against
    the margin, whatever the float rounding of the mean."""
    hi, lo = _errors([a for a, _ in pairs]), _errors([b for _, b in pairs])
    v = compare("c", hi, lo, "a", "b", min_effect=float(min_effect))
    exact = sum(Fraction(b - a, 10) for a, b in pairs) / len(pairs)  # 100 (1 - a/1000) - 100 (1 - b/1000)
    effect, se, crit, _ = difference_test(hi, lo)
    if crit * se > float(min_effect):  # the t-test's margin: continuous, equal to a rational mean almost never
        margin = Fraction(v.margin)
        assume(abs(exact - margin) > Fraction(1, 10**6) and abs(exact + margin) > Fraction(1, 10**6))
    else:
        margin = Fraction(min_effect)
    want = Outcome.REPRODUCED if exact > margin else Outcome.CONTRADICTED if exact < -margin else Outcome.NOT_REPRODUCED
    assert v.outcome is want, (float(exact), effect, v.margin)


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


def _at(effect, spread=1.0, negated=False):
    """A paired comparison over 5 seeds with mean difference ``effect`` (min_effect 1.5)."""
    diffs = [effect + spread * d for d in (-1, -0.5, 0, 0.5, 1)]
    hi, lo = Sample(diffs, range(5), ["hi"]), Sample([0.0] * 5, range(5), ["lo"])
    return (not_greater if negated else compare)("c", hi, lo, "a", "b", min_effect=1.5)


def test_a_verdict_keeps_its_numbers_and_settings():
    v = _at(3.0)
    assert v.outcome is Outcome.REPRODUCED and v.effect == pytest.approx(3.0) and v.settings == ("hi", "lo")
    assert v.margin >= 1.5 and f"needs more than {v.margin:.3g}" in v.evidence
    assert v.outcome_for(-3.0) is Outcome.CONTRADICTED and v.outcome_for(0.0) is Outcome.NOT_REPRODUCED
    n = _at(-3.0, negated=True)  # tolerance 1.5, t x standard error 0.98: reproduced up to +0.52
    assert n.outcome is Outcome.REPRODUCED and n.outcome_for(3.0) is Outcome.CONTRADICTED
    assert n.bound == pytest.approx(1.5 - 2.776 * 0.3536, abs=1e-3)
    assert n.outcome_for(0.5) is Outcome.REPRODUCED and n.outcome_for(1.0) is Outcome.NOT_REPRODUCED


def test_a_large_effect_that_grows_is_settled_at_once():
    """The issue's example: 75 points growing to 86 is settled at T."""
    v, more = settle({0: _at(75), 1: _at(86)}, MAX_DOUBLINGS)
    assert not more
    assert v.outcome is Outcome.REPRODUCED and v.settled_at == 0 and "+11 per doubling" in v.evidence


def test_a_small_effect_that_shrinks_toward_the_threshold_needs_a_larger_budget():
    """3 points shrinking to 2 against a threshold of 1.5: once more (1) would cross it."""
    v, more = settle({0: _at(3.0, 0.1), 1: _at(2.0, 0.1)}, MAX_DOUBLINGS)
    assert more and v.settled_at is None and v.effect == pytest.approx(2.0) and len(v.history) == 2
    v, more = settle({0: _at(3.0, 0.1), 1: _at(2.0, 0.1), 2: _at(1.9, 0.1)}, MAX_DOUBLINGS)
    assert v.outcome is Outcome.REPRODUCED and v.settled_at == 1
    assert [h[:2] for h in v.history] == [(0, "reproduced"), (1, "reproduced"), (2, "reproduced")]


def test_outcomes_that_disagree_between_budgets_are_not_settled():
    assert settle({0: _at(3.0, 0.1), 1: _at(0.2, 0.1)}, MAX_DOUBLINGS)[1]
    v, _ = settle({0: _at(0.2, 0.1), 1: _at(3.0, 0.1), 2: _at(3.1, 0.1)}, MAX_DOUBLINGS)
    assert v.outcome is Outcome.REPRODUCED and v.settled_at == 1
    flipping = {d: _at(3.0 if d % 2 else -3.0, 0.1) for d in range(MAX_DOUBLINGS + 1)}
    v, more = settle(flipping, MAX_DOUBLINGS)
    assert not more
    assert v.outcome is Outcome.CHANGES_WITH_BUDGET and v.settled_at is None
    assert "T: contradicted (-3); 2T: reproduced (+3); 4T: contradicted (-3); 8T: reproduced (+3)" in v.evidence


def test_a_longer_budget_that_measured_another_outcome_keeps_a_verdict_from_settling_before_it():
    """GN vs BN at batch 2 from seeds 1000 (2026-12-07): not reproduced at T, 2T and 4T, the trend from 2T to 4T
    keeping it, but 8T (trained for the study's other verdicts) measured 'contradicted': not settled at 2T."""
    moving = {0: _at(0.5, 0.1), 1: _at(0.6, 0.1), 2: _at(0.5, 0.1), 3: _at(-3.0, 0.1)}
    assert [moving[d].outcome for d in range(3)] == [Outcome.NOT_REPRODUCED] * 3
    v, more = settle(moving, MAX_DOUBLINGS)
    assert not more and v.outcome is Outcome.CHANGES_WITH_BUDGET and v.settled_at is None
    v, more = settle({d: moving[d] for d in range(3)}, MAX_DOUBLINGS)  # without 8T: settled at T
    assert not more and v.outcome is Outcome.NOT_REPRODUCED and v.settled_at == 0
    agreeing = {**moving, 3: _at(0.4, 0.1)}
    assert settle(agreeing, MAX_DOUBLINGS)[0].settled_at == 0


def test_an_unsettled_verdict_says_why_in_words():
    """The shape of the batch-size study's unsettled claims: a gap that shrinks at every doubling and crosses the
    threshold at the last budget; the report says so, with the one-more-doubling reading."""
    shrinking = {0: _at(2.7, 0.1), 1: _at(2.1, 0.1), 2: _at(1.7, 0.1), 3: _at(1.2, 0.1)}
    v, more = settle(shrinking, MAX_DOUBLINGS)
    assert not more and v.outcome is Outcome.CHANGES_WITH_BUDGET
    assert "falls at every doubling toward 0 (+2.7, +2.1, +1.7, +1.2)" in v.evidence
    assert "moved it by -0.5, and once more would read 'not reproduced at this scale' (+0.7)" in v.evidence
    flipping = {d: _at(3.0 if d % 2 else -3.0, 0.1) for d in range(MAX_DOUBLINGS + 1)}
    assert "moves up and down with the budget" in settle(flipping, MAX_DOUBLINGS)[0].evidence
    rising = {0: _at(-3.0, 0.1), 1: _at(-1.0, 0.1), 2: _at(1.0, 0.1), 3: _at(3.0, 0.1)}
    assert "rises at every doubling toward 0 and past it (-3, -1, +1, +3)" in settle(rising, MAX_DOUBLINGS)[0].evidence


def test_a_budget_that_could_not_compare_confirms_no_outcome():
    """A comparison at T that a longer budget could not make (its runs diverged there: one seed, no spread) is
    not settled by that budget, nor before it; at the largest budget it changes with budget, and says why."""
    lost = compare("c", [5.0], [3.0], "a", "b")
    assert lost.outcome is Outcome.INCONCLUSIVE and lost.effect is None
    v, more = settle({0: _at(75), 1: _at(86), 2: lost}, MAX_DOUBLINGS)
    assert more and v.settled_at is None
    v, more = settle({0: _at(75), **{d: lost for d in range(1, MAX_DOUBLINGS + 1)}}, MAX_DOUBLINGS)
    assert not more and v.outcome is Outcome.CHANGES_WITH_BUDGET
    assert "at 2T, 4T, 8T there was no difference to test" in v.evidence


def test_a_claim_with_no_training_comparison_needs_no_budget():
    v, more = settle({0: check("exact", True, "max error 1e-7")}, MAX_DOUBLINGS)
    assert not more
    assert v.outcome is Outcome.REPRODUCED and v.settled_at is None and len(v.history) == 1


def test_a_study_that_misses_its_target_withholds_its_verdicts():
    records = [_record("batch", s, 0.5, [2.3, 2.2, 2.1, 2.0, 1.9]) for s in range(3)]
    training = check_training(Target("test_acc", 0.9), records)
    verdicts = [_at(3.0), compare("c", [5], [3], "a", "b")]
    assert [v.outcome for v in withheld(verdicts, training)] == [NOT_TRAINED, Outcome.INCONCLUSIVE]


def test_as_good_as_is_a_non_inferiority_test_not_an_absence_of_evidence():
    seeds = range(4)
    reference = Sample([5.0, 5.1, 4.9, 5.0], seeds)
    close = Sample([5.02, 5.08, 4.93, 5.01], seeds)  # within 0.03 of the reference, seed by seed
    assert not_greater("c", close, reference, "a", "b", min_effect=0.2).outcome is Outcome.REPRODUCED
    # 0.4 worse on average, with a spread that cannot tell: not shown as good, and not shown worse either
    noisy = Sample([5.9, 4.6, 6.0, 5.1], seeds)
    v = not_greater("c", noisy, reference, "a", "b", min_effect=0.2)
    assert v.outcome is Outcome.NOT_REPRODUCED and "as good as needs" in v.evidence
    worse = Sample([9.0, 9.1, 8.9, 9.0], seeds)
    assert not_greater("c", worse, reference, "a", "b", min_effect=0.2).outcome is Outcome.CONTRADICTED
    assert not_greater("c", [9], [5], "a", "b").outcome is Outcome.INCONCLUSIVE


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
    records = [_record("batch", s, 0.95, flat) for s in range(3)] + [
        _record("group", s, 0.5, falling) for s in range(3)
    ]
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


def test_the_contrast_study_leaves_a_diverged_run_out(tmp_path):
    """A diverged run has no contrast curve (it was scored at chance, not evaluated): the study does not fail on it,
    and leaves it out of the accuracy drops (it has no accuracy to lose), saying so in the notes."""
    from normlab.lab.studies import STUDIES

    records = []
    for norm in ("instance", "none"):
        for seed in (0, 1):
            diverged = norm == "none" and seed == 1
            curves = {"loss": [1.0] * 10, "step": list(range(10))}
            if not diverged:
                curves["contrast_acc"] = [0.9, 0.88 - 0.1 * (norm == "none"), 0.85, 0.8, 0.75 - 0.3 * (norm == "none")]
            config = {"study": "contrast", "task": "classify", "norm": norm, "seed": seed}
            metrics = {"test_acc": 0.1 if diverged else 0.9, "diverged": float(diverged)}
            records.append(RunRecord(f"{norm}{seed}", "contrast", "done", config, metrics, curves, "", 1.0))
    result = STUDIES["contrast"].analyze(records, tmp_path, Options())
    (verdict,) = result.verdicts
    assert "none drop 45 pts" in verdict.evidence  # seed 0's drop; the diverged seed 1 is out, not a drop of 0
    assert any("none: 1 of 2 runs diverged" in note for note in result.notes)


def test_a_flag_that_marks_runs_apart_labels_them_in_words():
    """The sequence study's fixed-recipe recording runs: labelled by what they are; the tuned runs not by a flag."""
    records = [_record("batch", s, 0.9, [2.0, 1.0]) for s in range(2)]
    records += [_record("layer", s, 0.95, [2.0, 1.0]) for s in range(2)]
    for r in records:
        r.config["record_batch_stats"] = False
    recording = _record("batch", 9, 0.97, [2.0, 1.0])
    recording.config["record_batch_stats"] = True
    check = check_training(Target("test_acc", 0.9), [*records, recording])
    assert check.best == "norm=batch, fixed recipe, batch statistics recorded: 97.0%"
    assert check.settings == 3 and "record_batch_stats" not in repr(check)
