"""The twin contract (normlab.nn._twin.Twin): every module uses it, torch's __init__ and _load_from_state_dict are
not run, and each instance is one call in torch.fx while its class keeps its own module."""

import pickle

import pytest
import torch

import normlab.nn as nl
from normlab.nn._twin import FX_LEAF_MODULE, Twin, torch_base
from normlab.nn.norm_classes import NORM_CLASSES

PARAMETRIZATIONS = (nl.WeightNorm, nl.SpectralNorm)  # reparametrize a weight; never a layer in a model's graph


def _public_module_classes():
    out = []
    for name in nl.__all__:
        obj = getattr(nl, name)
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj not in PARAMETRIZATIONS:
            out.append(obj)
    return out


@pytest.mark.parametrize("cls", _public_module_classes(), ids=lambda c: c.__name__)
def test_every_public_module_is_a_twin(cls):
    assert issubclass(cls, Twin)


TWINS_OF_TORCH = [cls for cls in NORM_CLASSES if torch_base(cls) is not None]


def test_the_twins_of_torch_classes_are_found_by_their_bases():
    assert {cls.__name__ for cls in TWINS_OF_TORCH} == {
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LayerNorm",
        "GroupNorm",
        "RMSNorm",
        "LocalResponseNorm",
    }
    assert torch_base(nl.BatchNorm2d) is torch.nn.BatchNorm2d and issubclass(nl.BatchNorm2d, torch.nn.BatchNorm2d)
    assert torch_base(nl.LayerNorm2d) is None and torch_base(nl.BatchNormAct2d) is None  # subclasses of twins
    assert torch_base(torch.nn.BatchNorm2d) is None


def _build(cls):
    return nl.GroupNorm(2, 4) if cls is nl.GroupNorm else cls(4)


@pytest.mark.parametrize("cls", TWINS_OF_TORCH, ids=lambda c: c.__name__)
def test_the_torch_parents_init_is_not_run(cls, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{torch_base(cls).__name__}.__init__ ran")

    for base in torch_base(cls).__mro__[:-2]:  # the torch classes above the twin, Module and object aside
        if "__init__" in vars(base):
            monkeypatch.setattr(base, "__init__", refuse)
    module = _build(cls)
    assert isinstance(module, torch_base(cls))


@pytest.mark.parametrize("cls", TWINS_OF_TORCH, ids=lambda c: c.__name__)
def test_the_torch_parents_load_from_state_dict_is_not_run(cls, monkeypatch):
    state = _build(cls).state_dict()

    def refuse(self, *args, **kwargs):
        raise AssertionError("torch's _load_from_state_dict ran")

    for base in torch_base(cls).__mro__[:-2]:
        if "_load_from_state_dict" in vars(base):
            monkeypatch.setattr(base, "_load_from_state_dict", refuse)
    module = _build(cls)
    module.load_state_dict(state)


@pytest.mark.parametrize("cls", NORM_CLASSES, ids=lambda c: c.__name__)
def test_each_instance_traces_as_a_leaf_and_its_class_keeps_its_module(cls):
    module = _build(cls)
    assert module.__module__ == FX_LEAF_MODULE and cls.__module__.startswith("normlab.nn.")
    clone = pickle.loads(pickle.dumps(module))
    assert type(clone) is cls and clone.__module__ == FX_LEAF_MODULE


def test_a_twin_that_runs_its_torch_parents_init_traces_as_a_leaf_too():
    conv = nl.StdConv2d(3, 4, 3)
    assert conv.__module__ == FX_LEAF_MODULE and isinstance(conv, torch.nn.Conv2d)
