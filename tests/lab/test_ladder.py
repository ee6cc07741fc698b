"""One trajectory, several budgets: a "wsd" run's shorter budgets branch off its longer one (loop.fit_ladder), and
each equals the run at that budget trained alone, bit for bit on CPU (alone, packed, the language model, resumed)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from normlab.lab.config import make_config
from normlab.lab.sweep.checkpoint import Saver
from normlab.lab.training.loop import Schedule, lr_factor
from normlab.lab.training.packed import plan_packs, train_packed
from normlab.lab.training.train import run, run_ladder

from .test_checkpoint import CONFIGS, Crash, CrashingSaver


def _classify(**kw):
    base = dict(
        study="t",
        norm="batch",
        seed=3,
        steps=24,
        width=8,
        depth=2,
        points=6,
        lr_schedule="wsd",
        train_subset=300,
        weight_decay=1e-3,
    )
    return make_config("classify", **{**base, **kw})


def _lm(**kw):
    """A small language model at "wsd" (test_checkpoint's, shorter)."""
    fields = dict(norm="layer", seed=2, steps=12, warmup=2, lr_schedule="wsd", points=4)
    return dataclasses.replace(CONFIGS["char_lm"], **{**fields, **kw})


def test_wsd_is_constant_then_decays_as_one_minus_sqrt():
    steps, cooldown = 100, 0.2
    factors = [lr_factor("wsd", s, steps, cooldown) for s in range(steps)]
    assert factors[:80] == [1.0] * 80
    assert factors[80] == 1.0 and factors[90] == pytest.approx(1 - math.sqrt(0.5))
    assert all(a > b for a, b in zip(factors[80:], factors[81:], strict=False))
    assert Schedule(lr=1.0, kind="wsd", steps=steps).branch_step == 80
    assert Schedule(lr=1.0, kind="cosine", steps=steps).branch_step == 0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor("linear", 0, 10)


@pytest.mark.parametrize(
    "extra",
    [{}, {"grad_predictiveness": True, "record_batch_stats": True, "output_spread": True, "scale_invariance": True}],
)
def test_a_ladder_equals_each_budget_trained_alone(extra):
    configs = [_classify(doublings=d, **extra) for d in (2, 0, 1)]  # any order in, the same order out
    alone = [run(c) for c in configs]
    assert run_ladder(configs) == alone
    steps = [len(out[1]["step"]) for out in alone]
    assert steps[1] < steps[2] < steps[0]  # curve points keep their spacing: more of them at larger budgets


def test_a_packed_ladder_equals_each_run_alone_at_each_budget():
    configs = [
        _classify(norm=norm, seed=seed, lr=lr, doublings=d, batch_size=8)
        for norm, seed, lr in (("batch", 0, 0.05), ("group", 1, 0.1), ("batch", 2, 50.0))
        for d in (0, 1)
    ]
    (item,) = plan_packs(configs)
    assert sorted(map(str, item)) == sorted(map(str, configs))
    packed = train_packed(configs)
    for config, (metrics, curves) in zip(configs, packed, strict=True):
        m_alone, c_alone = run(config)
        assert metrics.keys() == m_alone.keys() and curves.keys() == c_alone.keys()
        for key in metrics:
            assert metrics[key] == pytest.approx(m_alone[key], rel=1e-4, abs=1e-5), key
    assert packed[4][0]["diverged"] == packed[5][0]["diverged"] == 1.0


def test_a_language_model_ladder_equals_each_budget_alone():
    configs = [_lm(steps=16, warmup=3, doublings=d) for d in (0, 1)]
    assert run_ladder(configs) == [run(c) for c in configs]


def test_a_ladder_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tmp_path):
    configs = [_classify(doublings=d) for d in (0, 1)]
    whole = run_ladder(configs)
    path = tmp_path / "ladder.pt"
    with pytest.raises(Crash):  # killed in the trunk after the first budget's cooldown was evaluated
        run_ladder(configs, saver=CrashingSaver(path, at=25))
    assert run_ladder(configs, saver=Saver(path, every_s=1e9)) == whole


def test_only_one_run_at_several_wsd_budgets_makes_a_ladder():
    with pytest.raises(ValueError, match="one 'wsd' run"):
        run_ladder([_classify(doublings=0), _classify(doublings=1, seed=9)])
    with pytest.raises(ValueError, match="one 'wsd' run"):
        run_ladder([_classify(doublings=0, lr_schedule="cosine"), _classify(doublings=1, lr_schedule="cosine")])


@pytest.mark.parametrize("task", ["classify", "char_lm"])
def test_a_larger_budget_asked_for_later_goes_on_from_the_kept_trunk(tmp_path, task):
    from normlab.lab.sweep.checkpoint import Checkpoints

    if task == "classify":
        configs = [_classify(doublings=d) for d in (0, 1, 2)]
    else:
        configs = [_lm(norm="rms", seed=5, doublings=d) for d in (0, 1, 2)]
    trunk = Checkpoints(directory=str(tmp_path)).trunk(configs[:2])
    run_ladder(configs[:2], trunk=trunk)
    saved = trunk.load(before=10**9)
    assert saved is not None and saved["step"] > 0  # where the 2T budget's cooldown left the trunk
    assert run_ladder(configs[2:], trunk=trunk) == [run(configs[2])]
    assert trunk.load(before=saved["step"] - 1) is None  # a shorter budget cannot start past its own cooldown


def test_a_pack_at_a_larger_budget_goes_on_from_its_runs_kept_trunks(tmp_path):
    """Three runs packed at T and 2T keep their stable phase; two of them, packed anew at 4T (a verdict that needs
    them further), go on from it and end where each run trained alone at 4T ends, up to float rounding."""
    from normlab.lab.sweep.checkpoint import Checkpoints
    from normlab.lab.training.packed import PackTrunk

    checkpoints = Checkpoints(directory=str(tmp_path))
    runs = [
        [_classify(norm=norm, seed=seed, lr=lr, doublings=d, batch_size=8) for d in (0, 1, 2)]
        for norm, seed, lr in (("batch", 0, 0.05), ("group", 1, 0.1), ("batch", 2, 0.02))
    ]
    trunk_for = lambda run: checkpoints.trunk(run, packed=True)  # noqa: E731
    train_packed([c for run in runs for c in run[:2]], trunk_for=trunk_for)
    loaded = []
    original = PackTrunk.load
    PackTrunk.load = lambda self, before: loaded.append(original(self, before)) or loaded[-1]
    try:
        later = train_packed([runs[2][2], runs[0][2]], trunk_for=trunk_for)
    finally:
        PackTrunk.load = original
    assert loaded and loaded[0] is not None and loaded[0]["step"] > 0
    for (metrics, curves), config in zip(later, [runs[2][2], runs[0][2]], strict=True):
        m_alone, c_alone = run(config)
        assert curves["step"] == c_alone["step"]
        for key in metrics:
            assert metrics[key] == pytest.approx(m_alone[key], rel=1e-4, abs=1e-5), key


def test_a_sweep_with_fewer_items_than_workers_splits_its_largest_pack():
    from normlab.lab.sweep.runner import _spread

    configs = [_classify(seed=seed, doublings=d, batch_size=2) for seed in range(5) for d in (2, 3)]
    (item,) = plan_packs(configs)
    first, second = _spread([item], workers=2)
    assert len(first) + len(second) == len(configs) and len(first) == 4  # two runs (ladders of two budgets)
    assert {c.seed for c in first}.isdisjoint({c.seed for c in second})
    assert _spread([item], workers=1) == [item]
    assert _spread([[configs[0]]], workers=4) == [[configs[0]]]  # one run: nothing to split


def test_a_sweep_starts_its_longest_items_first():
    """Work items are ordered by their longest budget's cost: a language model at 8T before one at T, a pack of 20
    before one of its runs alone (the workers then finish a round together)."""
    from normlab.lab.sweep.runner import _cost, _schedule

    lm = [make_config("char_lm", study="t", norm="layer", seed=0, lr_schedule="wsd", doublings=d) for d in (0, 3)]
    assert _cost([lm[1]]) == 8 * _cost([lm[0]])
    pack = [_classify(seed=seed, batch_size=2) for seed in range(20)]
    assert _cost(pack) > _cost(pack[:1])
    order = _schedule([[lm[0]], pack[:1], [lm[1]], pack])
    assert order.index([lm[1]]) < order.index([lm[0]]) and order.index(pack) < order.index(pack[:1])


def test_the_rounds_of_a_lab_run_share_one_pool_of_workers(tmp_path, monkeypatch):
    """Each round used to start its worker processes again (importing torch: about 2 s while the cores wait); the
    rounds of one compare share :func:`worker_pool`'s, and every run is stored as before."""
    from normlab.lab.store import Store, config_key
    from normlab.lab.sweep import runner

    started = []

    class Counted(runner.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Counted)
    rounds = [[_classify(seed=seed, steps=3, norm=norm)] for seed in range(2) for norm in ("batch", "group")]
    path = tmp_path / "r.sqlite"
    with runner.worker_pool(2) as pool:
        for configs in rounds:
            assert runner.run_sweep(configs, path, workers=2, progress=False, pool=pool, max_pack=1).ran == 1
    assert len(started) == 1
    runner.run_sweep([_classify(seed=9, steps=3)], path, workers=2, progress=False)  # alone: a pool of its own
    assert len(started) == 2
    with Store(path) as store:
        assert store.finished_keys() == {config_key(c) for r in rounds for c in r} | {
            config_key(_classify(seed=9, steps=3))
        }
    with runner.worker_pool(1) as none, runner.worker_pool(4, executor="ray") as ray:
        assert none is None and ray is None


def test_runs_that_differ_only_in_a_measurement_train_once_each_as_asked(monkeypatch):
    """BatchNorm's language model with and without the batch-statistics recorder, at two budgets: one trajectory,
    trained once with the recorder (the measurement changes no training step), each configuration getting what it
    gives alone, the unrecorded one without the recorder's metrics."""
    from normlab.lab.metrics import BATCH_VAR_FLUCTUATION
    from normlab.lab.training import train as train_module

    configs = [_lm(norm="batch", seed=4, doublings=d, record_batch_stats=r) for d in (0, 1) for r in (False, True)]
    calls = []
    real = train_module._train
    monkeypatch.setattr(train_module, "_train", lambda cs, *a: calls.append(cs) or real(cs, *a))
    together = run_ladder(configs)
    assert len(calls) == 1 and [c.doublings for c in calls[0]] == [0, 1]  # once, with the recorder
    assert all(c.record_batch_stats for c in calls[0])
    alone = [run(c) for c in configs]
    assert together == alone
    assert [BATCH_VAR_FLUCTUATION in metrics for metrics, _ in together] == [False, True, False, True]


def test_a_kept_trunk_that_measured_more_carries_on_a_run_that_measures_less(tmp_path):
    """The trajectory kept by the recorded and unrecorded runs trained together carries on the unrecorded run at a
    larger budget; a recorded run does not start from a trajectory that did not record."""
    from normlab.lab.sweep.checkpoint import Checkpoints

    checkpoints = Checkpoints(directory=str(tmp_path))
    both = [_lm(norm="batch", seed=4, doublings=d, record_batch_stats=r) for d in (0, 1) for r in (False, True)]
    run_ladder(both, trunk=checkpoints.trunk(both))
    plain_4t = _lm(norm="batch", seed=4, doublings=2)
    recorded_4t = dataclasses.replace(plain_4t, record_batch_stats=True)
    kept = checkpoints.trunk([plain_4t]).load(before=10**9)
    assert kept is not None and kept["step"] > 0
    assert run_ladder([plain_4t], trunk=checkpoints.trunk([plain_4t])) == [run(plain_4t)]
    assert checkpoints.trunk([_lm(norm="batch", doublings=2, seed=9)]).load(before=10**9) is None  # another run's
    only_plain = Checkpoints(directory=str(tmp_path / "plain"))
    run_ladder([plain_4t], trunk=only_plain.trunk([plain_4t]))
    assert only_plain.trunk([recorded_4t]).load(before=10**9) is None
