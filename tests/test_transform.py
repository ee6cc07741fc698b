"""fold_batchnorm, freeze_batchnorm, swap and param_groups on real torchvision models (random weights) and small
models, with their reports."""

import pytest
import torch
from helpers import random_input
from torch import nn

import normlab
import normlab.nn as nl

torchvision = pytest.importorskip("torchvision")


def _warmed(model, shape=(4, 3, 64, 64)):
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for i in range(2):
            model(random_input(shape, seed=20 + i))
    return model.eval()


@pytest.mark.parametrize("factory", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("twins", [False, True], ids=["torch", "normlab"])
def test_fold_batchnorm_on_torchvision_models(factory, twins):
    torch.manual_seed(0)
    model = getattr(torchvision.models, factory)(weights=None)
    if twins:
        normlab.from_torch(model)
    model = _warmed(model)
    x = random_input((2, 3, 64, 64), seed=1)
    expected = model(x)
    folded, report = normlab.fold_batchnorm(model)
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert report.traced and len(report.folded) == len(bns) and not report.skipped, str(report)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    relative = float((folded(x) - expected).abs().max() / expected.abs().max())
    assert relative < 1e-5, relative
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()), "input model changed"


def test_fold_reports_what_it_cannot_fold():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.bn_train, self.bn_after_add = (
                nn.Conv2d(3, 3, 1),
                nn.BatchNorm2d(3),
                nn.BatchNorm2d(3),
                nn.BatchNorm2d(3),
            )
            self.std = nl.StdConv2d(3, 3, 1)
            self.bn_std = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y + self.bn_after_add(x + 1) + self.bn_std(self.std(x))

    model = _warmed(Block(), (4, 3, 5, 5))
    folded, report = normlab.fold_batchnorm(model)
    reasons = dict(report.skipped)
    assert "also used elsewhere" in reasons["bn"]
    assert "does not come from a Conv/Linear" in reasons["bn_after_add"]
    assert "computes its own weight" in reasons["bn_std"]
    x = random_input((2, 3, 5, 5), seed=2)
    torch.testing.assert_close(folded(x), model(x))
    model.bn_std.train()
    _, report = normlab.fold_batchnorm(model)
    assert "training mode" in dict(report.skipped)["bn_std"]


def test_fold_falls_back_to_sequential_when_the_model_does_not_trace():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else self.body(-x)

    model = _warmed(DataDependent(), (4, 3, 6, 6))
    x = random_input((2, 3, 6, 6), seed=3).abs()
    expected = model(x)
    folded, report = normlab.fold_batchnorm(model)
    assert not report.traced and report.folded == [("body.0", "body.1")]
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_freeze_batchnorm_keeps_eval_outputs():
    model = _warmed(torchvision.models.resnet18(weights=None))
    x = random_input((2, 3, 64, 64), seed=4)
    expected = model(x)
    frozen = normlab.freeze_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    frozen.train()  # frozen: training mode changes nothing
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


def test_swap_batch_to_group_on_resnet18():
    model = torchvision.models.resnet18(weights=None)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model, report = normlab.swap(model, "batch", "group")
    groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(report.changed) == count == len(groups) and not report.skipped
    assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 32 for m in groups)
    model(random_input((2, 3, 32, 32)))  # batch-independent now: a batch of 2 trains
    assert "swapped 20 layer(s)" in str(report)


def test_swap_picks_valid_group_counts_and_says_what_it_skips():
    model = nn.Sequential(nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24), nn.Flatten(), nn.LayerNorm([24, 2]))
    model, report = normlab.swap(model, "batch", "group", num_groups=16)
    assert isinstance(model[1], nn.GroupNorm) and model[1].num_groups == 12
    model, report = normlab.swap(model, "layer", "rms")
    assert report.skipped and "trailing dims" in report.skipped[0][1]
    with pytest.raises(ValueError, match="source must be one of"):
        normlab.swap(model, "dyt", "group")


def test_param_groups_exempt_norms_and_biases():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nl.BatchNorm2d(8), nn.Linear(8, 4), nl.RMSNorm(4), nl.FilterResponseNorm(8)
    )
    decay, exempt = normlab.param_groups(model, weight_decay=0.1)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(model[0].weight), id(model[2].weight)}
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert len(exempt["params"]) == sum(1 for _ in model.parameters()) - 2
    torch.optim.AdamW(normlab.param_groups(model, 0.05))  # the groups are what torch's optimizers take
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        normlab.param_groups(model, -1)


def test_fold_folds_frozen_batch_norms_even_in_a_model_in_training_mode():
    model = _warmed(torchvision.models.resnet18(weights=None))
    x = random_input((2, 3, 64, 64), seed=6)
    expected = model(x)
    frozen = normlab.freeze_batchnorm(model).train()  # frozen: training mode changes nothing, so it folds
    folded, report = normlab.fold_batchnorm(frozen)
    assert len(report.folded) == 20 and not report.skipped, str(report)
    relative = float((folded(x) - expected).abs().max() / expected.abs().max())
    assert relative < 1e-5, relative
