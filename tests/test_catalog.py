"""Every registered method: usable through create_norm and in the lab's models, explained, consistent."""

import pytest
import torch

import normlab
from normlab.explain import explain
from normlab.lab.models import CharTransformer, ConvNet, NotApplicable
from normlab.registry import is_batch_dependent

NAMES = normlab.available_norms()


@pytest.mark.parametrize("name", NAMES)
def test_explain_knows_every_method_and_agrees_with_the_registry(name):
    e = explain(name, "8,64,16,16")
    text = e.text()
    assert e.method.title in text and "batch-dependent:" in text and "formula:" in text
    if e.layout is not None:
        assert e.layout.batch_dependent == is_batch_dependent(name), name
    else:
        assert not is_batch_dependent(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims, shape", [(1, (4, 1, 12)), (2, (4, 1, 8, 8))])
def test_every_method_trains_in_the_lab_cnn_or_says_why_not(name, spatial_dims, shape):
    torch.manual_seed(0)
    try:
        model = ConvNet(1, 3, spatial_dims, norm=name, width=8, depth=2)
    except NotApplicable as err:
        assert name in str(err) or "spatial" in str(err) or "FrozenBatchNorm2d" in str(err)
        return
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(shape), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    model.eval()
    assert model(x).shape == (4, 3)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_in_the_transformer_or_says_why_not(name):
    try:
        model = CharTransformer(10, name, dim=16, layers=1, heads=2, max_len=8)
    except NotApplicable as err:
        assert "spatial" in str(err) or "FrozenBatchNorm2d" in str(err), str(err)
        return
    tokens = torch.randint(0, 10, (3, 8))
    out = model(tokens, torch.zeros(3, 8, dtype=torch.bool))
    out.sum().backward()
    assert out.shape == (3, 8, 10) and torch.isfinite(out).all()


def test_only_methods_without_spatial_statistics_work_on_tokens():
    applicable = []
    for name in NAMES:
        try:
            CharTransformer(10, name, dim=16, layers=1, heads=2, max_len=8)
            applicable.append(name)
        except NotApplicable:
            pass
    assert {"layer", "rms", "batch", "dyt", "power", "none", "batchrenorm", "ghost"} <= set(applicable)
    assert not {"instance", "frn", "lrn"} & set(applicable)


def test_norms_with_a_built_in_activation_replace_the_relu():
    for name in NAMES:
        method = normlab.registry.get_method(name)
        try:
            model = ConvNet(1, 3, 2, norm=name, width=8, depth=2)
        except NotApplicable:
            continue
        activations = [type(m) for m in model.features[2::3]]  # conv, norm, activation per block
        assert activations == [torch.nn.Identity if method.fused_activation else torch.nn.ReLU] * 2, name
    with pytest.raises(ValueError, match="share their activation"):
        ConvNet(1, 3, 2, norm=["frn", "batch"], width=8, depth=2, copies=2)
