"""The run contract: typed configurations whose every field is in the key, and --device honoured by every task."""

import dataclasses
import inspect

import pytest
import torch

from normlab.lab import STUDIES, Options
from normlab.lab.config import CharLMConfig, ClassifyConfig, DistributedConfig, as_dict, from_dict, make_config
from normlab.lab.store import config_key
from normlab.lab.training import distributed_run, packed, train, user_model


@pytest.mark.parametrize("cls", [ClassifyConfig, CharLMConfig, DistributedConfig])
def test_every_field_is_in_the_key(cls):
    task = cls.__dataclass_fields__["task"].default
    base = as_dict(make_config(task, study="s", norm="batch", seed=0))
    assert set(base) == {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name in ("task",):
            continue
        value = base[f.name]
        changed = {
            **base,
            f.name: (
                value + 1
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else (not value)
                if isinstance(value, bool)
                else f"{value}x"
            ),
        }
        assert config_key(changed) != config_key(base), f.name


def test_training_code_reads_no_inline_defaults():
    """Every value a run uses comes from its typed configuration, never from ``config.get(key, default)``, and the
    training code takes the typed object itself (no dict converted back on the way)."""
    for module in (train, packed, distributed_run, user_model):
        source = inspect.getsource(module)
        assert "config.get(" not in source and "from_dict(" not in source, module.__name__


def test_unknown_fields_are_rejected():
    with pytest.raises(TypeError):
        make_config(study="s", norm="batch", seed=0, widht=64)
    with pytest.raises(ValueError, match="unknown task"):
        make_config("regress", study="s", norm="batch", seed=0)


def test_every_study_builds_typed_configs():
    for study in STUDIES.values():
        for config in study.configs(Options()):
            stored = as_dict(config)  # the form the store keeps, read back to the same typed object
            assert from_dict(stored) == config
            assert make_config(config.task, **{k: v for k, v in stored.items() if k != "task"}) == config
            deep = dataclasses.asdict(config)  # as_dict copies without asdict's recursion: the same plain form
            assert stored == {k: list(v) if isinstance(v, tuple) else v for k, v in deep.items()}


def test_as_dict_copies_what_a_caller_may_change():
    config = make_config(study="s", norm="ghost", seed=0, norm_options={"virtual_batch_size": 4})
    stored = as_dict(config)
    stored["norm_options"]["virtual_batch_size"] = 8
    assert config.norm_options == {"virtual_batch_size": 4}


@pytest.fixture
def forward_devices():
    """Every module forward's input and parameter devices, for the duration of a test."""
    seen = []

    def hook(module, args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)] + list(module.parameters(recurse=False))
        seen.extend(t.device.type for t in tensors)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


@pytest.mark.parametrize(
    "config",
    [
        make_config(study="s", norm="batch", seed=0, steps=3, train_subset=64, device="meta"),
        # BatchNorm: the padded batch. A per-token norm trains on the real tokens, whose indices are data (nonzero),
        # which the meta device cannot compute: that path fails before a forward there, and runs on CUDA
        make_config("char_lm", study="s", norm="batch", seed=0, steps=3, batch_size=2, seq_len=16, device="meta"),
    ],
    ids=["classify", "char_lm"],
)
def test_models_and_batches_land_on_the_configured_device(config, forward_devices):
    """The meta device stands in for CUDA: the same code path, and a tensor left on the CPU shows. Training cannot
    finish on meta (a loss has no value there); what matters is where every forward ran until then."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        train.run(config)
    assert forward_devices and set(forward_devices) == {"meta"}


def test_packed_runs_land_on_the_configured_device(forward_devices):
    configs = [make_config(study="s", norm="group", seed=s, steps=3, train_subset=64, device="meta") for s in (0, 1)]
    with pytest.raises((RuntimeError, NotImplementedError)):
        packed.train_packed(configs)
    assert forward_devices and set(forward_devices) == {"meta"}


def test_every_study_passes_the_device_on():
    for study in STUDIES.values():
        for config in study.configs(Options(device="cuda")):
            exact_check = config.task == "distributed"  # gloo ranks, documented as CPU in the setup text
            assert config.device == ("cpu" if exact_check else "cuda"), (study.name, config)


def test_a_sweep_of_untyped_configurations_is_refused_with_a_clear_error(tmp_path):
    from normlab.lab.sweep.runner import run_sweep

    with pytest.raises(TypeError, match="run_sweep: configs must be typed run configurations"):
        run_sweep([{"study": "t", "task": "classify"}], str(tmp_path / "r.sqlite"), progress=False)
    assert not (tmp_path / "r.sqlite").exists()
