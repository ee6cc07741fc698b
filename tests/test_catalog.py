"""Every registered method: usable through create_norm and in the lab's models, explained, consistent."""

import pytest
import torch

import normlab
from normlab import registry
from normlab.explain import explain
from normlab.lab.training.models import ConvNet, NotApplicable
from normlab.lab.training.transformer import CharTransformer
from normlab.method import Method, single
from normlab.nn.norm_act import norm_act_class
from normlab.nn.norm_classes import NORM_CLASSES
from normlab.registry import METHODS, create_norm, is_batch_dependent
from normlab.transform import is_norm, param_groups

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


def _norm_list_gaps(methods) -> list[str]:
    """What is missing for each class the registry builds (every method, every spatial_dims it applies to) from
    the one list of norm classes and what derives from it: its norm+act class, ``is_norm``, and no weight decay
    from ``param_groups`` (with ``bias=False``, so that a parameter named "bias" is not exempt by its name)."""
    gaps = []
    for method in methods:
        for spatial_dims in method.spatial_dims:
            kwargs = {"num_groups": 4} if method.grouped else {}
            norm = create_norm(method.name, 8, spatial_dims=spatial_dims, **kwargs)
            if type(norm) is torch.nn.Identity:  # no normalization ("none"; "spectral" normalizes weights)
                continue
            where = f"{method.name} (spatial_dims={spatial_dims}) builds {type(norm).__name__}"
            if type(norm) not in NORM_CLASSES:
                gaps.append(f"{where}: not in normlab.nn.norm_classes.NORM_CLASSES")
            modules = [norm]
            try:
                modules.append(create_norm(method.name, 8, spatial_dims=spatial_dims, act="relu", **kwargs))
            except ValueError as err:
                gaps.append(f"{where}: no norm+act class ({err})")
            else:
                if type(modules[1]) is not norm_act_class(type(norm)):
                    gaps.append(f"{where}: act= gives a {type(modules[1]).__name__}")
            for module in modules:  # the norm, and its norm+act module
                if not is_norm(module):
                    gaps.append(f"{where}: is_norm({type(module).__name__}) is False")
                decay = param_groups(torch.nn.Sequential(module), weight_decay=0.1, bias=False)[0]["params"]
                if decay:
                    gaps.append(f"{where}: param_groups decays {len(decay)} parameter(s) of {type(module).__name__}")
    return gaps


def test_every_class_the_registry_builds_is_in_the_one_list_of_norm_classes():
    built = set()
    for method in METHODS:  # what the check below walks over: every record, at every spatial_dims
        for spatial_dims in method.spatial_dims:
            built.add(
                type(
                    create_norm(
                        method.name, 8, spatial_dims=spatial_dims, **({"num_groups": 4} if method.grouped else {})
                    )
                )
            )
    assert len(built - {torch.nn.Identity}) >= 25
    assert _norm_list_gaps(METHODS) == []


class Rescale(torch.nn.Module):
    """A norm class left out of the list, whose name does not say "Norm"."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(num_features))

    def forward(self, x):
        return x * self.weight.view(1, -1, *([1] * (x.dim() - 2))) / x.abs().amax()


def test_the_norm_list_check_fails_for_a_registered_class_left_out(monkeypatch):
    fake = Method(
        name="rescale",
        title="Rescale",
        summary="a test's norm",
        paper="-",
        modules="`Rescale`",
        build=single(Rescale),
        formula="y = x * gamma / max|x|",
        reference=lambda m, x: x,
        batch_dependent=True,
    )
    monkeypatch.setitem(registry._BY_NAME, "rescale", fake)
    monkeypatch.setitem(registry._BY_ALIAS, "rescale", "rescale")
    gaps = _norm_list_gaps([fake])
    assert len(gaps) == 4 * 4, gaps  # every spatial_dims: not listed, no norm+act class, not a norm, decayed
    assert all(g.startswith("rescale (spatial_dims=") and "builds Rescale" in g for g in gaps)
    with pytest.raises(TypeError):
        Method("rescale", "Rescale")  # records are keyword-only
