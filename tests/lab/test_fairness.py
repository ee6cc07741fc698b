"""Fairness: each setting's learning rate chosen on a validation split, verdicts settled over budgets (the settings
under an unsettled verdict trained further), outcomes as a type, and the training-code hash in every run's key."""

import dataclasses
import inspect
import math
import re
import tempfile
from pathlib import Path

import pytest
import torch

from normlab.lab import STUDIES, Options
from normlab.lab import store as store_module
from normlab.lab.config import as_dict, make_config
from normlab.lab.judging.fairness import MAX_LOWERINGS, SELECTION_SEED_OFFSET, Selection, StudyPlan
from normlab.lab.judging.selection import lost_its_training
from normlab.lab.judging.study import Study, StudyResult, Target, group_by, values
from normlab.lab.judging.verdicts import MAX_DOUBLINGS, Outcome, Verdict, compare
from normlab.lab.metrics import DIVERGED, TEST_ACC, TEST_BPC, VALID_ACC, VALID_BPC
from normlab.lab.store import RunRecord, config_key, training_code_hash
from normlab.lab.sweep import runner
from normlab.lab.training.train import build_classifier, classifier_data, ladder_key, run


class _Study(Study):
    """Two norms, two seeds; the learning rate 0.1 is each grid's centre."""

    name = "fake"
    default_norms = ("batch", "group")
    selection = Selection(seeds=2, extensions=2)

    def __init__(self):
        self.target = Target(TEST_ACC, 0.5)

    def configs(self, options):
        return [
            make_config(study=self.name, norm=n, seed=s, lr=0.1, epochs=2, output_spread=True, lr_schedule="wsd")
            for n in self.default_norms
            for s in options.seed_list()
        ]

    def analyze(self, records, figdir, options):
        acc = {n: values(runs, TEST_ACC, 100) for (n,), runs in group_by(records, "norm").items()}
        return StudyResult(
            verdicts=[compare("group beats batch", acc["group"], acc["batch"], "GN", "BN", min_effect=1.5)]
        )


def _done(config, **metrics):
    return RunRecord(config_key(config), config.study, "done", as_dict(config), metrics, {"loss": []}, "", 1.0)


def _select(plan, score):
    """Store a selection run for every (setting, lr, seed) of the grid with ``score(norm, lr)`` as its metric."""
    return {config_key(c): _done(c, **{VALID_ACC: score(c.norm, c.lr)}) for c in plan.selection_configs()}


def test_the_grid_is_log_spaced_with_at_least_four_rates():
    grid = Selection().grid(0.05)
    assert len(grid) >= 4
    ratios = [b / a for a, b in zip(grid, grid[1:], strict=False)]
    assert all(r == pytest.approx(ratios[0], rel=1e-2) for r in ratios) and 0.05 in grid
    with pytest.raises(ValueError, match="at least 4"):
        Selection(below=1, above=1)


def test_selection_runs_hold_out_validation_on_their_own_seeds():
    plan = StudyPlan(_Study(), Options(seeds=2, first_seed=3))
    configs = plan.selection_configs()
    finals = plan.final_configs()
    assert {c.seed for c in configs} == {3 + SELECTION_SEED_OFFSET, 4 + SELECTION_SEED_OFFSET}
    assert not {c.seed for c in configs} & {c.seed for c in finals}
    assert all(c.validation_fraction == 0.2 and not c.output_spread for c in configs)
    assert all(c.validation_fraction == 0.0 and c.output_spread for c in finals)
    assert len(configs) == 2 * len(Selection().grid(0.1)) * 2  # settings x rates x seeds


def test_each_setting_gets_its_own_best_rate_and_an_edge_grows_the_grid():
    plan = StudyPlan(_Study(), Options(seeds=2))
    best = {"batch": 0.1, "group": 0.0111}  # group's best is below the first grid's low edge

    def score(norm, lr):
        return 0.9 - abs(math.log(lr / best[norm]))

    assert plan.update(_select(plan, score))  # group's best rate sits on the low edge: the grid grows
    group = next(c for c in plan.choices.values() if c.label == "norm=group")
    assert group.grid[0] == pytest.approx(0.0111 / 3, rel=1e-2) and group.extensions == 1
    while plan.update(_select(plan, score)):
        pass
    chosen = {c.label: c.chosen for c in plan.choices.values()}
    assert chosen == {"norm=batch": 0.1, "norm=group": pytest.approx(0.0111, rel=1e-2)}
    assert {c.norm: c.lr for c in plan.final_configs()} == {"batch": 0.1, "group": chosen["norm=group"]}


def test_a_grid_grows_at_most_its_extensions_and_says_so():
    plan = StudyPlan(_Study(), Options(seeds=2))
    rounds = 0
    while plan.update(_select(plan, lambda norm, lr: -lr)):  # the smaller the better, without end
        rounds += 1
    assert rounds == 3  # two extensions, then the screening's survivors go on
    assert all("edge" in c.note and c.chosen == min(c.grid) for c in plan.choices.values())


def _at_budgets(plan, gaps):
    """Final runs at every budget the plan asks for: batch at 80%, group ``gaps[doublings]`` points above (the same
    for every seed: a difference with no spread, judged against min_effect alone)."""
    records = {}
    for c in plan.budget_configs():
        gap = gaps[c.doublings] if c.norm == "group" else 0.0
        records[config_key(c)] = _done(c, **{TEST_ACC: (80.0 + gap + c.seed) / 100})
    return records


def _planned(tmp_path):
    plan = StudyPlan(_Study(), Options(seeds=3))
    while plan.update(_select(plan, lambda norm, lr: 1.0 - abs(lr - 0.1))):
        pass
    return plan


def test_successive_halving_screens_every_rate_and_chooses_among_the_better_half():
    plan = StudyPlan(_Study(), Options(seeds=2))
    selection = _Study.selection
    screening = plan.selection_configs()
    assert {c.doublings for c in screening} == {0} and len(screening) == 2 * 4 * 2  # settings x rates x seeds
    assert {c.budget for c in screening} == {selection.budget / 4}
    # screened, 0.1 and 0.0333 lead (0.3 and 0.0111 are dropped); at the whole budget 0.0333 beats 0.1

    def score(norm, lr, doublings):
        return {0.0111: 0.5, 0.0333: 0.75, 0.1: 0.8, 0.3: 0.6}[lr] if doublings == 0 else 1.0 - abs(lr - 0.03)

    def stored():
        return {
            config_key(c): _done(c, **{VALID_ACC: score(c.norm, c.lr, c.doublings)}) for c in plan.selection_configs()
        }

    assert plan.update(stored())  # the survivors go on
    whole = [c for c in plan.selection_configs() if c.doublings == 2]
    assert {c.lr for c in whole} == {0.1, 0.0333} and len(whole) == 2 * 2 * 2
    assert {c.budget for c in whole} == {selection.budget / 4}  # the same runs' longer budget: one trajectory
    assert {ladder_key(c) for c in whole} <= {ladder_key(c) for c in screening}
    assert not plan.update(stored())
    for choice in plan.choices.values():
        assert choice.chosen == 0.0333 and choice.survivors == [0.1, 0.0333] and set(choice.scores) == {0.1, 0.0333}
        assert choice.screening[0.0111] == 0.5
    assert "Successive halving" in plan.fairness(stored(), Path(tempfile.mkdtemp())).selection


def test_without_halving_every_rate_trains_the_whole_selection_budget():
    study = _Study()
    study.selection = Selection(seeds=2, halving=0)
    plan = StudyPlan(study, Options(seeds=2))
    configs = plan.selection_configs()
    assert {c.doublings for c in configs} == {0} and {c.budget for c in configs} == {study.selection.budget}
    while plan.update(_select(plan, lambda norm, lr: 1.0 - abs(lr - 0.1))):
        pass
    assert all(c.chosen == 0.1 and not c.screening for c in plan.choices.values())
    with pytest.raises(ValueError, match="halving"):
        Selection(halving=-1)


def test_a_verdict_that_more_training_would_not_change_settles_at_the_study_budget(tmp_path):
    plan = _planned(tmp_path)
    assert sorted({c.doublings for c in plan.budget_configs()}) == [0, 1]  # every final run at T and 2T
    assert len(plan.budget_configs()) == 2 * len(plan.final_configs())
    result, grew = plan.judge(_at_budgets(plan, {0: 75.0, 1: 86.0}), tmp_path)
    (verdict,) = result.verdicts
    assert not grew and verdict.outcome is Outcome.REPRODUCED and verdict.settled_at == 0
    assert [h[:2] for h in verdict.history] == [(0, "reproduced"), (1, "reproduced")]


def test_an_unsettled_verdict_trains_its_settings_further_until_it_settles(tmp_path):
    plan = _planned(tmp_path)
    gaps = {0: 3.0, 1: 1.8, 2: 1.7}  # 3 -> 1.8 against 1.5: once more (0.6) would cross it, so train at 4T
    result, grew = plan.judge(_at_budgets(plan, gaps), tmp_path)
    (verdict,) = result.verdicts
    assert grew and verdict.settled_at is None
    assert sorted({c.doublings for c in plan.budget_configs()}) == [0, 1, 2]
    result, grew = plan.judge(_at_budgets(plan, gaps), tmp_path)
    (verdict,) = result.verdicts
    assert not grew and verdict.outcome is Outcome.REPRODUCED and verdict.settled_at == 1
    assert "4T: reproduced" in str([f"{2**d}T: {o}" for d, o, _ in verdict.history])


def test_a_verdict_that_keeps_changing_says_so_with_its_numbers(tmp_path):
    plan = _planned(tmp_path)
    gaps = {0: 3.0, 1: 0.5, 2: 3.0, 3: 0.5}
    grew = True
    while grew:
        result, grew = plan.judge(_at_budgets(plan, gaps), tmp_path)
    (verdict,) = result.verdicts
    assert max(c.doublings for c in plan.budget_configs()) == 3
    assert verdict.outcome is Outcome.CHANGES_WITH_BUDGET
    assert "T: reproduced (+3); 2T: not reproduced at this scale (+0.5)" in verdict.evidence


def test_a_longer_budget_whose_runs_diverged_keeps_the_verdict_from_settling(tmp_path):
    """The contrast study from seeds 0 (2026-12-07): the unnormalized net's runs collapsed at 2T and 4T, so the
    comparison there had one seed, gave no difference and no settings; it must still count as measured (not read
    as "reproduced at T" with no budget settled), and the report says why and what diverged where."""

    class Diverging(_Study):
        def analyze(self, records, figdir, options):
            kept = [r for r in records if not r.metrics.get("diverged")]
            acc = {n: values(runs, TEST_ACC, 100) for (n,), runs in group_by(kept, "norm").items()}
            notes = [f"{len(records) - len(kept)} runs diverged"] if len(kept) < len(records) else []
            verdict = compare("group beats batch", acc["group"], acc["batch"], "GN", "BN", min_effect=1.5)
            return StudyResult(verdicts=[verdict], notes=notes)

    plan = StudyPlan(Diverging(), Options(seeds=3))
    while plan.update(_select(plan, lambda norm, lr: 1.0 - abs(lr - 0.1))):
        pass
    grew = True
    while grew:
        records = _at_budgets(plan, {d: 75.0 for d in range(4)})
        for c in plan.budget_configs():  # every group run but one diverges at 2T and beyond
            if c.norm == "group" and c.doublings > 0 and c.seed > 0:
                records[config_key(c)] = _done(c, **{TEST_ACC: 0.1, "diverged": 1.0})
        result, grew = plan.judge(records, tmp_path)
    (verdict,) = result.verdicts
    assert max(c.doublings for c in plan.budget_configs()) == 3
    assert verdict.outcome is Outcome.CHANGES_WITH_BUDGET and verdict.settled_at is None
    assert [h[1] for h in verdict.history] == ["reproduced"] + ["inconclusive"] * 3
    assert "at 2T, 4T, 8T there was no difference to test" in verdict.evidence
    lost = [n[: n.index(" (")] for n in result.notes]
    assert lost == [f"At {b}, 2 of 3 final runs of norm=group diverged or collapsed" for b in ("2T", "4T", "8T")]


def test_a_rate_the_final_runs_cannot_hold_is_lowered_and_they_train_again(tmp_path):
    """The unnormalized net in the contrast study (2026-12-07, seeds 0): a rate chosen at the selection budget,
    which 3 of 5 final runs learned and then lost at 2T. When most of a budget's runs lose it, the setting's rate
    goes one grid step down (at most MAX_LOWERINGS times), the report says why, and its final runs train again. A
    minority that diverges (Batch Renorm at batch 1, 1 of 5: the rate below trained to 23% instead of 60%) stays a
    result, and so does a rate whose next one below scored clearly worse in selection (Batch Renorm at batch 1 on
    the iid stream: 0.06 scored 0.28, 0.02 0.14)."""
    plan = StudyPlan(_Study(), Options(seeds=3))
    while plan.update(_select(plan, lambda norm, lr: 0.98 - 0.1 * abs(lr - 0.1))):  # rates below score about as well
        pass
    group = next(c for c in plan.choices.values() if c.label == "norm=group")
    assert group.chosen == 0.1

    def records(unheld_above, seeds=(0, 1, 2)):  # group's runs at rates above ``unheld_above`` lose it at 2T
        out = _at_budgets(plan, {d: 3.0 for d in range(MAX_DOUBLINGS + 1)})
        for c in plan.budget_configs():
            if c.norm == "group" and c.lr > unheld_above and c.doublings == 1 and c.seed in seeds:
                if c.seed == 1:
                    out[config_key(c)] = _done(c, **{TEST_ACC: 0.1, DIVERGED: 1.0})
                else:  # learned, then every unit died: the loss back at its first value
                    out[config_key(c)] = dataclasses.replace(out[config_key(c)], curves={"loss": [2.3, 0.1, 2.3]})
        return out

    result, grew = plan.judge(records(0.05, seeds=(1,)), tmp_path)  # one of three: a result, not a lowered rate
    assert group.chosen == 0.1 and not group.lowered and result.verdicts[0].settled_at is None
    assert "At 2T, 1 of 3 final runs of norm=group diverged or collapsed" in result.notes[0]
    result, grew = plan.judge(records(0.05), tmp_path)
    assert grew and not result.verdicts and group.chosen == pytest.approx(0.0333, rel=1e-2)
    assert (
        group.note == "0.1 diverged or collapsed in 3 of 3 at 2T: the final runs train at 0.0333, the next rate below"
    )
    assert {c.lr for c in plan.budget_configs() if c.norm == "group"} == {group.chosen}
    unheld = plan.roles()["unheld rates"]  # what they cost is counted, not hidden
    assert {(c.norm, c.lr) for c in unheld} == {("group", 0.1)} and len(unheld) == 9  # 3 seeds to 4T
    assert next(c for c in plan.choices.values() if c.label == "norm=batch").chosen == 0.1  # it held its rate
    result, grew = plan.judge(records(0.05), tmp_path)  # held at the lowered rate: judged as usual
    assert not grew and result.verdicts[0].outcome is Outcome.REPRODUCED and result.verdicts[0].settled_at == 0
    plan = StudyPlan(_Study(), Options(seeds=3))
    while plan.update(_select(plan, lambda norm, lr: 0.98 - 0.1 * abs(lr - 0.1))):
        pass
    while (judged := plan.judge(records(0.0), tmp_path))[1]:  # no rate holds: lowered twice, then judged
        pass
    group = next(c for c in plan.choices.values() if c.label == "norm=group")
    assert len(group.lowered) == MAX_LOWERINGS and group.chosen == pytest.approx(0.0111, rel=1e-2)
    assert judged[0].verdicts
    plan = _planned(tmp_path)  # the rate below scored 7% worse in selection: kept, and the report says why
    while plan.judge(records(0.05), tmp_path)[1]:
        pass
    group = next(c for c in plan.choices.values() if c.label == "norm=group")
    assert group.chosen == 0.1 and not group.lowered and not plan.roles()["unheld rates"]
    assert group.note.endswith("kept, as the rate below (0.0333) scored 7% worse in selection: worse at any budget")


def test_a_run_lost_its_training_when_it_diverged_or_learned_and_collapsed():
    assert lost_its_training({DIVERGED: 1.0}, [2.3, 1.0])
    assert lost_its_training({}, [2.3, 0.01, 0.5, 2.29])  # learned, then back to its first loss
    assert not lost_its_training({}, [2.3, 0.01, 0.5, 1.0])  # worse, but still learned
    assert not lost_its_training({}, [2.3, 2.28, 2.31])  # never learned (BN at batch 1): not a rate it lost
    assert not lost_its_training({DIVERGED: 0.0}, [])


def test_recommendations_follow_the_settled_verdicts_not_those_at_budget_t(tmp_path):
    class Advising(_Study):
        def analyze(self, records, figdir, options):
            result = super().analyze(records, figdir, options)

            def recommend(settled):
                (verdict,) = [settled.get(v.claim, v) for v in result.verdicts]
                return ["use group" if verdict.outcome is Outcome.REPRODUCED else "no clear winner"]

            result.recommendations, result.recommend = recommend({}), recommend
            return result

    plan = StudyPlan(Advising(), Options(seeds=3))
    while plan.update(_select(plan, lambda norm, lr: 1.0 - abs(lr - 0.1))):
        pass
    gaps, grew = {0: 3.0, 1: 0.5, 2: 3.0, 3: 0.5}, True  # reproduced at T, then it changes with every doubling
    while grew:
        result, grew = plan.judge(_at_budgets(plan, gaps), tmp_path)
    assert result.verdicts[0].outcome is Outcome.CHANGES_WITH_BUDGET
    assert result.recommendations == ["no clear winner"]


def test_a_study_that_misses_its_target_trains_no_further_and_withholds_its_verdicts(tmp_path):
    plan = _planned(tmp_path)
    plan.study.target = Target(TEST_ACC, 0.99)  # batch at 80%, group at 81.8% at 2T
    result, grew = plan.judge(_at_budgets(plan, {0: 3.0, 1: 1.8}), tmp_path)
    assert not grew and not result.training.met and result.training.budget == "2T"
    assert [v.outcome for v in result.verdicts] == [Outcome.NOT_TRAINED]


def test_a_selection_run_never_reads_the_test_set():
    config = make_config(study="t", norm="batch", seed=0, steps=5, validation_fraction=0.25)
    data, full = classifier_data(config), classifier_data(dataclasses.replace(config, validation_fraction=0.0))
    assert len(data.x_test) == len(full.x_train) // 4 and len(data.x_train) == len(full.x_train) - len(data.x_test)
    assert torch.equal(data.x_test, full.x_train[len(data.x_train) :])
    metrics, _ = run(config)
    assert VALID_ACC in metrics and not any(k.startswith("test") for k in metrics)


def test_every_method_vs_method_study_selects_and_every_study_checks():
    for study in STUDIES.values():
        assert study.budgets.max_doublings >= 1, study.name
        assert study.selection is not None or study.untuned, study.name


def test_outcomes_are_a_type_and_no_study_writes_one():
    assert Verdict("c", "reproduced", "e").outcome is Outcome.REPRODUCED
    with pytest.raises(ValueError):
        Verdict("c", "mostly reproduced", "e")
    literal = re.compile(r'"(reproduced|contradicted|inconclusive|not reproduced at this scale)"')
    for path in Path(inspect.getfile(STUDIES["online"].__class__)).parent.glob("*.py"):
        assert not literal.search(path.read_text()), path.name


def test_the_key_holds_the_training_code(tmp_path, monkeypatch):
    """Editing the code that trains a run changes every key: old rows cannot be reused by forgetting a bump."""
    import shutil

    root = Path(store_module.__file__).resolve().parents[1]
    copy = tmp_path / "normlab"
    shutil.copytree(root, copy)
    assert training_code_hash(copy) == training_code_hash()
    train = copy / "lab" / "training" / "train.py"
    train.write_text(train.read_text() + "\n# an edit\n")
    assert training_code_hash(copy) != training_code_hash()
    (copy / "lab" / "judging" / "report.py").write_text("# the report does not train\n")
    train.write_text((root / "lab" / "training" / "train.py").read_text())
    assert training_code_hash(copy) == training_code_hash()
    kernel = copy / "functional" / "csrc" / "rms_norm.cpp"  # a kernel compiled on first use trains runs too
    kernel.write_text(kernel.read_text() + "\n// an edit\n")
    assert training_code_hash(copy) != training_code_hash()
    kernel.write_text((root / "functional" / "csrc" / "rms_norm.cpp").read_text())
    config = make_config(study="t", norm="batch", seed=0)
    before = config_key(config)
    monkeypatch.setattr(store_module, "_CODE", "edited")
    assert config_key(config) != before


def test_a_worker_with_other_training_code_stores_nothing(tmp_path):
    config = make_config(study="t", norm="batch", seed=0, steps=2)
    with pytest.raises(RuntimeError, match="training code changed"):
        runner.execute([config], str(tmp_path / "r.sqlite"), code="not this code")
    assert not (tmp_path / "r.sqlite").exists() or store_module.Store(tmp_path / "r.sqlite").count() == 0


def test_recipes_reach_the_lab_models():
    from normlab.lab.training.data import load_text
    from normlab.lab.training.transformer import CharTransformer
    from normlab.nn.weight_norm import _weight_normalized

    config = make_config(study="t", norm="meanonly", seed=0)
    model = build_classifier(config, classifier_data(config))
    assert len(_weight_normalized(model)) == 4  # mean-only BN comes with WN on every conv and the head
    lm = CharTransformer(len(load_text().vocab), "dyt", 16, 1)
    assert [m.norm.alpha.item() for m in (lm.blocks[0].norm1, lm.blocks[0].norm2, lm.final_norm)] == pytest.approx(
        [0.8, 0.2, 0.2]
    )


def test_a_fixed_recipe_measurement_is_not_tuned():
    """The sequence study's batch-statistics runs measure BN's fluctuation at a stated rate (the rate is part of the
    measure): the plan screens no rate for them and keeps theirs, while the tuned transformers get chosen rates."""
    plan = StudyPlan(STUDIES["sequence"], Options())
    fixed = [c for c in plan.written if getattr(c, "record_batch_stats", False)]
    assert {c.task for c in fixed} == {"char_lm", "classify"}
    assert not any(getattr(c, "record_batch_stats", False) for c in plan.selection_configs())
    for choice in plan.choices.values():
        choice.chosen = 3e-2
    final = plan.final_configs()
    assert {c.lr for c in final if getattr(c, "record_batch_stats", False)} == {c.lr for c in fixed}
    assert {c.lr for c in final if c.task == "char_lm" and not c.record_batch_stats} == {3e-2}


def test_a_language_model_selection_run_never_reads_the_test_text():
    plan = StudyPlan(STUDIES["sequence"], Options())
    lm = [c for c in plan.selection_configs() if c.task == "char_lm"]
    assert lm and all(c.validation_only for c in lm)
    assert not any(getattr(c, "validation_only", False) for c in plan.final_configs())
    config = make_config("char_lm", study="t", norm="layer", seed=0, steps=3, batch_size=2, seq_len=16)
    selection, _ = run(dataclasses.replace(config, validation_only=True))
    final, _ = run(config)
    assert VALID_BPC in selection and not any(k.startswith("test") for k in selection)
    assert selection[VALID_BPC] == final[VALID_BPC] and TEST_BPC in final
