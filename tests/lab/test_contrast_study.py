"""The contrast study compares accuracy drops of nets that learned: a run that collapsed to chance (an unnormalized
net at its chosen rate can, trained on) has no accuracy to lose and leaves the comparison, said in the notes."""

from __future__ import annotations

from normlab.lab import STUDIES, Options
from normlab.lab.config import as_dict
from normlab.lab.judging.verdicts import Outcome
from normlab.lab.metrics import DIVERGED, TEST_ACC
from normlab.lab.store import RunRecord, config_key

STUDY = STUDIES["contrast"]


def _records(curves: dict[str, list[list[float]]]) -> list[RunRecord]:
    out = []
    configs = {(c.norm, c.seed): c for c in STUDY.configs(Options())}
    for norm, per_seed in curves.items():
        for seed, curve in enumerate(per_seed):
            c = configs[(norm, seed)]
            metrics = {TEST_ACC: curve[0], DIVERGED: 0.0}
            curves_of_run = {"contrast_acc": curve}
            out.append(RunRecord(config_key(c), STUDY.name, "done", as_dict(c), metrics, curves_of_run, "", 1))
    return out


def _verdict(result, norm):
    return next(v for v in result.verdicts if v.claim.startswith(f"{norm} loses"))


def test_collapsed_runs_leave_the_contrast_comparison(tmp_path):
    robust = [[0.99, 0.98, 0.97, 0.95, 0.92 + 0.01 * s] for s in range(5)]
    fragile = [[0.98, 0.95, 0.9, 0.8, 0.70 + 0.01 * s] for s in range(5)]
    collapsed = [[0.083] * 5] * 3
    result = STUDY.analyze(_records({"instance": robust, "none": collapsed + fragile[3:]}), tmp_path, Options())
    none = _verdict(result, "none")
    assert "paired over 2 seeds" in none.evidence  # the 3 collapsed seeds are out, not read as 'no drop'
    assert any("none: 3 of 5 runs diverged or collapsed" in n for n in result.notes)
    result = STUDY.analyze(_records({"instance": robust, "none": [[0.083] * 5] * 5}), tmp_path, Options())
    none = _verdict(result, "none")
    assert none.outcome is Outcome.INCONCLUSIVE and "every none run diverged or collapsed" in none.evidence
    result = STUDY.analyze(_records({"instance": robust, "none": fragile}), tmp_path, Options())
    assert _verdict(result, "none").outcome is Outcome.REPRODUCED and not result.notes
