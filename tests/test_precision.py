"""normlab.keep_norms_fp32: pure bf16 training loses a norm's weight updates (they round away near 1); with the norms
in float32 they survive, while the model's inputs and outputs stay bf16."""

import copy

import pytest
import torch
from torch import nn

import normlab

STEPS = 30


def _train(keep: bool) -> dict:
    """A Linear + LayerNorm + Linear model trained in pure bf16 with Adam at lr 1e-3, from the same seed both ways."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4)).to(torch.bfloat16)
    if keep:
        normlab.keep_norms_fp32(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g).bfloat16(), torch.randn(64, 4, generator=g).bfloat16()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    norm, first = model[1].weight, model[0].weight
    unchanged, layer_unchanged = [], []  # per step, the share of entries the step left as they were
    for _ in range(STEPS):
        before, layer_before = norm.detach().clone(), first.detach().clone()
        out = model(x)
        opt.zero_grad()
        nn.functional.mse_loss(out.float(), y.float()).backward()
        opt.step()
        unchanged.append(float((norm == before).float().mean()))
        layer_unchanged.append(float((first == layer_before).float().mean()))
    w = norm.detach().float()
    return {
        "out": out.dtype,
        "weight": norm.dtype,
        "unchanged": sum(unchanged) / STEPS,
        "layer_unchanged": sum(layer_unchanged) / STEPS,
        "still_one": float((w == 1).float().mean()),
        "moved": float((w - 1).abs().mean()),
    }


def test_pure_bf16_training_loses_norm_weight_updates_and_keep_norms_fp32_keeps_them():
    lost, kept = _train(keep=False), _train(keep=True)
    # pure bf16: every Adam step (about 1e-3) on a weight of 1 rounds away; the scales never leave 1
    assert lost["weight"] == torch.bfloat16 and lost["unchanged"] > 0.95 and lost["still_one"] > 0.95
    # ...while the Linear's small weights, where bf16 numbers are close together, do learn: the loss is the norm's
    assert lost["layer_unchanged"] < 0.5
    # norms in float32: every step moves them, by about lr per step
    assert kept["weight"] == torch.float32 and kept["unchanged"] < 0.05 and kept["still_one"] < 0.05
    assert 0.2 * STEPS * 1e-3 < kept["moved"] < 2 * STEPS * 1e-3
    assert lost["out"] == kept["out"] == torch.bfloat16  # the model's dtype, in and out


def test_batchnorm_state_and_statistics_in_float32_outputs_in_the_inputs_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).to(torch.bfloat16)
    normlab.keep_norms_fp32(model)
    bn = model[1]
    assert {t.dtype for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)} == {torch.float32}
    assert model[0].weight.dtype == torch.bfloat16  # the rest of the model is left as it was
    x = torch.randn(4, 3, 8, 8).bfloat16() + 3
    out = model(x)
    assert out.dtype == torch.bfloat16
    # the statistics are the float32 ones of the (bf16) conv output
    conv = model[0](x).float()
    torch.testing.assert_close(bn.running_mean, 0.1 * conv.mean((0, 2, 3)))
    model.float()  # a float32 model: the hooks change nothing
    assert model(x.float()).dtype == torch.float32


def test_idempotent_state_dict_keys_unchanged_and_copies_work():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.LayerNorm(8)).to(torch.bfloat16)
    keys = list(model.state_dict())
    weight = model[1].weight
    normlab.keep_norms_fp32(model)
    assert model[1].weight is weight  # the same Parameter: an optimizer built before still holds it
    model.to(torch.bfloat16)  # cast again: calling again restores float32 without a second pair of hooks
    assert normlab.keep_norms_fp32(model) is model
    for norm in (model[1], model[3]):
        assert len(norm._forward_pre_hooks) == len(norm._forward_hooks) == 1
        assert all(t.dtype == torch.float32 for t in norm.state_dict().values() if t.is_floating_point())
    assert list(model.state_dict()) == keys
    x = torch.randn(4, 4, dtype=torch.bfloat16)
    copied = copy.deepcopy(model)
    assert copied[3].weight.dtype == torch.float32 and copied(x).dtype == torch.bfloat16
    torch.testing.assert_close(copied(x), model(x))


def test_a_non_module_is_refused_by_name():
    with pytest.raises(TypeError, match="keep_norms_fp32: model must be a torch.nn.Module, got list"):
        normlab.keep_norms_fp32([nn.LayerNorm(4)])
