"""Checkpoints move both ways between torch.nn and normlab, through real files loaded with weights_only=True."""

import pytest
import torch

import normlab.nn as nl

CONFIGS = [
    ("BatchNorm1d", (5,), {}),
    ("BatchNorm2d", (5,), dict(affine=False)),
    ("BatchNorm2d", (5,), dict(bias=False)),
    ("BatchNorm3d", (5,), dict(track_running_stats=False)),
    ("BatchNorm2d", (5,), dict(momentum=None, eps=1e-3)),
    ("InstanceNorm1d", (5,), {}),
    ("InstanceNorm2d", (5,), dict(affine=True, track_running_stats=True)),
    ("InstanceNorm3d", (5,), dict(affine=True)),
    ("LayerNorm", ([5, 3],), {}),
    ("LayerNorm", (5,), dict(bias=False)),
    ("LayerNorm", (5,), dict(elementwise_affine=False)),
    ("GroupNorm", (2, 6), {}),
    ("GroupNorm", (3, 6), dict(affine=False)),
    ("RMSNorm", ([4, 5],), {}),
    ("RMSNorm", (5,), dict(eps=1e-6, elementwise_affine=False)),
]


def _pair(name, args, kw):
    return getattr(torch.nn, name)(*args, **kw), getattr(nl, name)(*args, **kw)


def _randomize(module):
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
            else:
                t.fill_(7)


@pytest.mark.parametrize("name, args, kw", CONFIGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
def test_same_parameters_buffers_and_metadata(name, args, kw):
    theirs, ours = _pair(name, args, kw)
    assert [(n, p.shape, p.dtype) for n, p in theirs.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in ours.named_parameters()
    ]
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_t) == list(sd_o)
    for key in sd_t:
        assert sd_t[key].shape == sd_o[key].shape and sd_t[key].dtype == sd_o[key].dtype, key
        assert torch.equal(sd_t[key], sd_o[key]), f"{key}: defaults differ"
    assert sd_t._metadata == sd_o._metadata  # includes the _version
    for attr in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
        assert (getattr(theirs, attr, None) is None) == (getattr(ours, attr, None) is None), attr
    assert repr(theirs) == repr(ours)


@pytest.mark.parametrize("name, args, kw", CONFIGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
@pytest.mark.parametrize("direction", ["torch_to_normlab", "normlab_to_torch"])
def test_checkpoint_round_trip_through_a_file(name, args, kw, direction, tmp_path):
    theirs, ours = _pair(name, args, kw)
    source, target = (theirs, ours) if direction == "torch_to_normlab" else (ours, theirs)
    _randomize(source)
    path = tmp_path / "ckpt.pt"
    torch.save(source.state_dict(), path)
    result = target.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_old_checkpoint_without_num_batches_tracked_loads():
    old = torch.nn.BatchNorm2d(3).state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    ours = nl.BatchNorm2d(3)
    ours.num_batches_tracked.fill_(5)
    ours.load_state_dict(old)
    assert int(ours.num_batches_tracked) == 5  # kept, as torch does for version < 2


def test_instance_norm_rejects_pre_0_4_running_stats_like_torch():
    state = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    from collections import OrderedDict

    sd = OrderedDict(state)
    sd._metadata = OrderedDict({"": {}})  # no version: a pre-0.4 checkpoint
    with pytest.raises(RuntimeError, match="Unexpected running stats"):
        nl.InstanceNorm2d(3).load_state_dict(sd)


def test_module_state_dict_nested_in_a_model_round_trips(tmp_path):
    model_t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.GroupNorm(2, 4))
    model_o = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), nl.BatchNorm2d(4), nl.GroupNorm(2, 4))
    model_t.train()
    model_t(torch.randn(2, 3, 6, 6))
    torch.save(model_t.state_dict(), tmp_path / "m.pt")
    model_o.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    model_t.eval(), model_o.eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(model_o(x), model_t(x), rtol=0, atol=0)


def test_train_eval_flags_and_reset():
    m = nl.BatchNorm1d(3)
    m(torch.randn(4, 3) + 2)
    assert int(m.num_batches_tracked) == 1 and m.running_mean.abs().sum() > 0
    m.eval()
    before = m.running_mean.clone()
    m(torch.randn(4, 3))
    assert torch.equal(m.running_mean, before) and int(m.num_batches_tracked) == 1
    m.reset_running_stats()
    assert int(m.num_batches_tracked) == 0 and torch.equal(m.running_var, torch.ones(3))


def test_track_running_stats_false_uses_batch_stats_in_eval():
    m = nl.BatchNorm1d(3, track_running_stats=False).eval()
    x = torch.randn(6, 3) * 4 + 3
    y = m(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
