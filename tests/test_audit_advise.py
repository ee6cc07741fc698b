"""normlab.audit's rules on models built to break them (and on clean ones), the audit / convert / advise commands."""

import json

import pytest
import torch
from torch import nn

import normlab
import normlab.nn as nl
from normlab.cli import main
from normlab.lab.user_study.advise import advise


def _rules(model, x, **kw):
    return [(f.rule, f.module) for f in normlab.audit(model, x, **kw)]


def test_each_rule_fires_with_its_evidence():
    class Permuted(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(8)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.9), Permuted(), nn.AdaptiveAvgPool2d(1), nn.GroupNorm(8, 8)
    )
    findings = normlab.audit(model, torch.randn(2, 3, 8, 8))
    by_rule = {f.rule: f for f in findings}
    assert set(by_rule) == {
        "bias-before-bn",
        "small-batch-bn",
        "keras-momentum",
        "permuted-layernorm",
        "single-value-statistic",
    }
    assert "8 parameters" in by_rule["bias-before-bn"].evidence and by_rule["bias-before-bn"].fix.endswith("bias=False")
    assert "BN 34.7% vs GN 24.1%" in by_rule["small-batch-bn"].evidence
    assert "momentum=0.1" in by_rule["keras-momentum"].fix
    assert "LayerNorm2d" in by_rule["permuted-layernorm"].fix
    assert by_rule["single-value-statistic"].module == "4"


def test_batch_size_low_precision_train_mode_and_weight_decay_rules():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), nl.BatchNorm2d(8)
    )
    x = torch.randn(32, 3, 8, 8)
    assert _rules(model, x) == []  # a clean model at batch 32
    assert ("small-batch-bn", "1") in _rules(model, x, batch_size=4)
    model.eval()
    model[4].train()
    assert _rules(model, x) == [("train-mode-norm", "4")]
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    assert [r for r, _ in _rules(model, x, optimizer=opt)] == ["norm-weight-decay"]
    opt = torch.optim.SGD(normlab.param_groups(model, 5e-4), lr=0.1)
    assert _rules(model, x, optimizer=opt) == []
    half = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).to(torch.bfloat16)
    assert _rules(half, torch.randn(8, 4, dtype=torch.bfloat16)) == [("lost-norm-updates", "1")]
    half = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4)).to(torch.bfloat16)
    assert _rules(half, torch.randn(8, 4, dtype=torch.bfloat16)) == [
        ("lost-norm-updates", "1"),
        ("low-precision-norm", "1"),
    ]


def test_norm_weights_in_bf16_lose_updates_measured_on_the_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8)).to(torch.bfloat16)
    with torch.no_grad():
        model[3].weight[:4] = 0.01  # where bf16 numbers are close together a step survives: half of this weight
    x = torch.randn(8, 4, dtype=torch.bfloat16)
    first, second = normlab.audit(model, x)
    assert first.rule == second.rule == "lost-norm-updates" and "normlab.keep_norms_fp32(model)" in first.fix
    assert first.evidence.endswith("in torch.bfloat16, at lr 1e-3 | 1e-4: weight 100% | 100%, bias 0% | 0%")
    assert second.evidence.endswith("weight 50% | 50%, bias 0% | 0%")
    fp16 = nn.Sequential(nn.LayerNorm(8)).half()  # fp16 keeps 3 more bits: a step of 1e-3 survives, 1e-4 does not
    (finding,) = normlab.audit(fp16, torch.randn(2, 8).half())
    assert finding.evidence.endswith("in torch.float16, at lr 1e-3 | 1e-4: weight 0% | 100%, bias 0% | 0%")
    fp16[0].requires_grad_(False)  # frozen: no update to lose
    assert not normlab.audit(fp16, torch.randn(2, 8).half())
    # with the norms in float32 the rule is gone, and the rules that follow the model's tensors still see them
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)).to(torch.bfloat16)
    assert _rules(normlab.keep_norms_fp32(model), x) == [("bias-before-bn", "1")]


def test_audit_restores_the_models_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    normlab.audit(model, torch.randn(4, 3, 6, 6) + 3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_audit_on_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    findings = normlab.audit(torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64))
    rules = {f.rule for f in findings}
    assert rules == {"small-batch-bn"} and len(findings) == 20  # its convs have no bias: nothing else to say


def test_audit_command_prints_one_entry_per_rule_and_evidence_listing_the_layers(capsys):
    pytest.importorskip("torchvision")
    args = ["audit", "torchvision.models:resnet18", "--input-shape", "2,3,64,64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 finding(s) in 20 module(s)\n[small-batch-bn] 20 modules: bn1, layer1.0.bn1, ")
    assert out.count("[small-batch-bn]") == out.count("evidence:") == 1 and "layer4.1.bn2" in out
    assert main(args + ["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["rule"] == "small-batch-bn" and len(row["modules"]) == 20 and row["modules"][-1] == "layer4.1.bn2"


MODEL_FILE = """
import torch
def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3), torch.nn.BatchNorm2d(16))
def not_a_model():
    return 3
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(MODEL_FILE)
    return path


def test_audit_command_text_and_json(model_file, capsys):
    assert main(["audit", f"{model_file}:build", "--input-shape", "2,3,8,8"]) == 0
    out = capsys.readouterr().out
    # each bias has its own evidence (two entries); the small batch is one entry for both BatchNorms
    assert "[bias-before-bn] 1\n" in out and "[bias-before-bn] 4\n" in out and "[small-batch-bn] 2 modules: 1, 4" in out
    assert main(["audit", f"{model_file}:build", "--input-shape", "2,3,8,8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["rule"], r["modules"]) for r in rows] == [
        ("bias-before-bn", ["1"]),
        ("small-batch-bn", ["1", "4"]),
        ("bias-before-bn", ["4"]),
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nofactory", "model must be MODULE:FACTORY"),
        ("missing.py:build", "does not exist"),
        ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
    ],
)
def test_audit_bad_model_spec(spec, message, capsys):
    assert main(["audit", spec, "--input-shape", "2,3,8,8"]) == 2
    assert message in capsys.readouterr().err


def test_audit_factory_that_is_not_a_model(model_file, capsys):
    assert main(["audit", f"{model_file}:not_a_model", "--input-shape", "2,3,8,8"]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err


def test_convert_command_swaps_folds_and_writes_a_loadable_state_dict(model_file, tmp_path, capsys):
    out = tmp_path / "converted.pt"
    assert main(["convert", f"{model_file}:build", "--swap", "batch=group", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "swapped 2 layer(s)" in text and "GroupNorm(16, 16" in text
    state = torch.load(out)
    model, _ = normlab.swap(
        nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16)),
        "batch",
        "group",
    )
    model.load_state_dict(state)
    assert main(["convert", f"{model_file}:build", "--fold", "--out", str(out)]) == 0
    assert "folded 2 BatchNorm layer(s)" in capsys.readouterr().out
    assert main(["convert", f"{model_file}:build", "--swap", "batch", "--out", str(out)]) == 2
    assert "--swap must be SOURCE=TARGET" in capsys.readouterr().err
    assert main(["convert", f"{model_file}:build", "--fold", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    "arch, batch, distributed, expected",
    [
        ("cnn", 2, False, "GroupNorm"),
        ("cnn", 64, False, "BatchNorm"),
        ("cnn", 4, True, "SyncBatchNorm"),
        ("transformer", 8, False, "LayerNorm"),
        ("rnn", 1, False, "LayerNorm"),
        ("mlp", 256, False, "BatchNorm1d"),
        ("mlp", 2, False, "LayerNorm"),
        ("gan", 16, False, "Spectral Normalization"),
    ],
)
def test_advise_recommends_with_reasons_and_published_numbers(arch, batch, distributed, expected):
    advice = advise(arch, batch, distributed)
    assert expected in advice.recommendation and advice.reasons and advice.published


def test_advise_command_with_the_users_own_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "compare",
                "--study",
                "contrast",
                "--norms",
                "in,gn",
                "--seeds",
                "2",
                "--out",
                str(out),
                "--no-progress",
                "--workers",
                "1",
                "--budget",
                "0.1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["advise", "--arch", "gan", "--batch-size", "8", "--report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured on this machine (normlab compare):" in text and "[contrast]" in text
    assert main(["advise", "--arch", "cnn", "--batch-size", "8", "--report", str(tmp_path)]) == 2
    assert "--report" in capsys.readouterr().err
    assert main(["advise", "--arch", "cnn", "--batch-size", "0"]) == 2


def test_a_norm_taking_its_statistics_in_half_precision_is_found():
    class NaiveRMSNorm(nn.Module):  # no float32 upcast: the sum of squares overflows fp16 for large inputs
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight.to(x.dtype)

    x = (torch.randn(4, 64) * 300).half()
    rules = {f.rule: f for f in normlab.audit(nn.Sequential(NaiveRMSNorm(64)), x)}
    assert "largest difference 1 of the output" in rules["low-precision-statistics"].evidence
    assert not normlab.audit(nn.Sequential(nl.RMSNorm(64, casting_mode="llama")), x)
