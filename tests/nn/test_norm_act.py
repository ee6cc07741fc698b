"""Norm + activation classes: real, importable, picklable classes with the norm's state_dict, and to_torch splits
them back into norm + activation."""

import io
import pickle

import pytest
import torch
from helpers import random_input

import normlab
import normlab.nn as nl
from normlab.nn.norm_act import NORM_ACT_CLASSES, norm_act_class


@pytest.mark.parametrize("norm_class", list(NORM_ACT_CLASSES), ids=lambda c: c.__name__)
def test_every_norm_act_class_is_importable_by_name_and_extends_its_norm(norm_class):
    cls = norm_act_class(norm_class)
    assert getattr(nl, cls.__name__) is cls and getattr(nl.norm_act, cls.__name__) is cls
    assert issubclass(cls, norm_class) and cls.__module__ == "normlab.nn.norm_act"


@pytest.mark.parametrize(
    "name, spatial_dims, shape",
    [
        ("batch", 2, (4, 8, 5, 5)),
        ("group", 2, (2, 8, 5, 5)),
        ("layer", 0, (3, 8)),
        ("instance", 1, (2, 8, 6)),
        ("ghost", 2, (4, 8, 3, 3)),
        ("frn", 2, (2, 8, 4, 4)),
    ],
)
def test_create_norm_with_act_is_norm_then_act_with_the_norms_state_dict(name, spatial_dims, shape):
    kwargs = {"num_groups": 4} if name == "group" else {}
    torch.manual_seed(0)
    plain = normlab.create_norm(name, 8, spatial_dims=spatial_dims, **kwargs)
    fused = normlab.create_norm(name, 8, spatial_dims=spatial_dims, act="gelu", **kwargs)
    fused.load_state_dict(plain.state_dict())
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = random_input(shape, seed=1)
    torch.testing.assert_close(fused(x), torch.nn.functional.gelu(plain(x)), rtol=0, atol=0)


def test_a_whole_model_holding_norm_act_modules_pickles_and_saves():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), normlab.create_norm("batch", 8, act="relu"), nl.GroupNormAct(4, 8, act="silu")
    )
    model(random_input((2, 3, 6, 6)))  # running statistics move
    clone = pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = random_input((2, 3, 6, 6), seed=3)
    model.eval(), clone.eval(), loaded.eval()
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert type(loaded[1]) is nl.BatchNormAct2d


def test_an_activation_with_parameters_keeps_its_keys_under_act():
    m = nl.BatchNormAct1d(8, act=torch.nn.PReLU())
    assert set(m.state_dict()) == set(nl.BatchNorm1d(8).state_dict()) | {"act.weight"}


def test_to_torch_splits_norm_act_into_norm_and_activation():
    model = torch.nn.Sequential(nl.BatchNormAct2d(8, act="relu"), nl.GroupNormAct(2, 8, act=torch.nn.PReLU()))
    model.train()
    x = random_input((2, 8, 4, 4), seed=2)
    expected = model(x)
    expected_keys = {
        f"{i}.0.{key}" if not key.startswith("act.") else f"{i}.1.{key[4:]}"
        for i, m in enumerate(model)
        for key in m.state_dict()
    }
    converted = normlab.to_torch(model)
    assert type(converted[0]) is torch.nn.Sequential and type(converted[0][0]) is torch.nn.BatchNorm2d
    assert type(converted[0][1]) is torch.nn.ReLU and type(converted[1][0]) is torch.nn.GroupNorm
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    assert set(converted.state_dict()) == expected_keys


def test_bad_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="act must be a module, a module class or one of"):
        normlab.create_norm("batch", 8, act="nope")
    with pytest.raises(ValueError, match="no norm\\+act class for"):
        norm_act_class(torch.nn.Linear)
