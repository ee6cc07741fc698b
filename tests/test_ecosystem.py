"""The twins are torch's classes: torch's, torch.fx's, torch.export's, ONNX's and timm's own tools run on models
that hold them, and give the outputs of the same model built from torch's layers."""

import io

import numpy as np
import pytest
import torch
from helpers import random_input
from torch import nn

import normlab
import normlab.nn as nl
from normlab.convert import TWINS

CONV_BN = [
    (nn.Conv1d, nl.BatchNorm1d, (2, 3, 9)),
    (nn.Conv2d, nl.BatchNorm2d, (2, 3, 7, 7)),
    (nn.Conv3d, nl.BatchNorm3d, (2, 3, 5, 5, 5)),
]


def _trained(model: nn.Module, shape, steps: int = 3) -> nn.Module:
    """Running statistics and affine parameters away from their init."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(random_input(shape, seed=10 + i, scale=2.0, shift=0.5))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _conv_bn_relu(conv, bn, shape):
    torch.manual_seed(0)
    return _trained(nn.Sequential(conv(3, 8, 3), bn(8), nn.ReLU()), shape)


@pytest.mark.parametrize("theirs, ours", [p for p in TWINS if p[1] is not nl.SyncBatchNorm], ids=lambda c: c.__name__)
def test_every_twin_is_an_instance_of_torchs_class(theirs, ours):
    assert issubclass(ours, theirs) and ours is not theirs


def test_sync_batch_norm_is_a_torch_batch_norm_but_not_torchs_sync_batch_norm():
    """torch's DistributedDataParallel refuses every torch.nn.SyncBatchNorm on CPU, where normlab's runs (gloo)."""
    m = nl.SyncBatchNorm(8)
    assert isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)


@pytest.mark.parametrize("conv, bn, shape", CONV_BN, ids=["1d", "2d", "3d"])
def test_fuse_modules_fuses_conv_bn_relu(conv, bn, shape):
    from torch.ao.quantization import fuse_modules

    model = _conv_bn_relu(conv, bn, shape)
    x = random_input(shape, seed=1)
    expected = model(x)
    fused = fuse_modules(model, [["0", "1", "2"]])
    assert isinstance(fused[1], nn.Identity) and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules()
    )
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fuse_modules_qat_keeps_the_batch_norm_parameters():
    from torch.ao.nn.intrinsic import ConvBnReLU2d
    from torch.ao.quantization import fuse_modules_qat

    model = _conv_bn_relu(nn.Conv2d, nl.BatchNorm2d, (2, 3, 7, 7)).train()
    weight = model[1].weight.detach().clone()
    fused = fuse_modules_qat(model, [["0", "1", "2"]])
    assert isinstance(fused[0], ConvBnReLU2d) and torch.equal(fused[0][1].weight, weight)


@pytest.mark.parametrize("conv, bn, shape", CONV_BN, ids=["1d", "2d", "3d"])
def test_fuse_conv_bn_eval(conv, bn, shape):
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = _conv_bn_relu(conv, bn, shape)
    x = random_input(shape, seed=2)
    fused = fuse_conv_bn_eval(model[0], model[1])
    torch.testing.assert_close(fused(x), model[1](model[0](x)), rtol=1e-5, atol=1e-5)


def test_torchs_convert_sync_batchnorm_converts_normlab_batch_norms():
    model = _conv_bn_relu(nn.Conv2d, nl.BatchNorm2d, (2, 3, 7, 7))
    running_mean = model[1].running_mean.clone()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(converted[1]) is nn.SyncBatchNorm
    assert torch.equal(converted[1].running_mean, running_mean)


def test_timm_freeze_batch_norm_2d_freezes_normlab_batch_norms():
    from timm.layers import freeze_batch_norm_2d
    from torchvision.ops.misc import FrozenBatchNorm2d  # what timm freezes into

    model = _conv_bn_relu(nn.Conv2d, nl.BatchNorm2d, (2, 3, 7, 7))
    x = random_input((2, 3, 7, 7), seed=3)
    expected = model(x)
    frozen = freeze_batch_norm_2d(model)
    assert isinstance(frozen[1], FrozenBatchNorm2d)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


def _mixed_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nl.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nl.GroupNorm(4, 8),
        nl.InstanceNorm2d(8, affine=True),
        nn.Flatten(2),
        nl.LayerNorm(25),
        nl.RMSNorm(25),
    )
    return _trained(model, (2, 3, 7, 7))


def test_fx_symbolic_trace_keeps_each_twin_as_one_call():
    import torch.fx as fx

    model = _mixed_model()
    traced = fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == [str(i) for i in range(len(model))]
    x = random_input((2, 3, 7, 7), seed=4)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_fx_fuse_matches_exact_types_so_it_leaves_normlab_batch_norm_and_fold_batchnorm_folds_it():
    """torch.fx.experimental.optimization.fuse tests ``type(m) is nn.BatchNorm2d``, which no subclass passes: it
    returns the model unfused (outputs unchanged). normlab.fold_batchnorm folds it."""
    from torch.fx.experimental.optimization import fuse

    model = _conv_bn_relu(nn.Conv2d, nl.BatchNorm2d, (2, 3, 7, 7))
    x = random_input((2, 3, 7, 7), seed=5)
    expected = model(x)
    fused = fuse(model)
    torch.testing.assert_close(fused(x), expected, rtol=1e-6, atol=1e-6)
    assert any(isinstance(m, nl.BatchNorm2d) for m in fused.modules())
    folded, _ = normlab.fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_torch_export():
    model = _mixed_model()
    x = random_input((2, 3, 7, 7), seed=6)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-6, atol=1e-6)


def test_onnx_export_matches_onnxruntime():
    import onnxruntime

    model = _mixed_model()
    x = random_input((2, 3, 7, 7), seed=7)
    buffer = io.BytesIO()
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"], verbose=False)
    program.save(buffer)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"x": x.numpy()})
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_from_torch_and_to_torch_still_swap_exact_classes():
    model = nn.Sequential(nn.BatchNorm2d(4), nl.BatchNorm2d(4), nl.BatchRenorm2d(4))
    normlab.from_torch(model)
    assert [type(m) for m in model] == [nl.BatchNorm2d, nl.BatchNorm2d, nl.BatchRenorm2d]
    normlab.to_torch(model)
    assert [type(m) for m in model] == [nn.BatchNorm2d, nn.BatchNorm2d, nl.BatchRenorm2d]


def test_timm_convnext_converts_exactly():
    """timm's LayerNorm2d becomes normlab's (same parameters); outputs and gradients bit-equal."""
    import copy
    import warnings

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    converted = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normlab.from_torch(converted)
    from normlab.convert import looks_like_norm

    kinds = {type(m) for m in converted.modules() if looks_like_norm(m)}
    assert kinds == {nl.LayerNorm2d}, kinds
    x = random_input((2, 3, 64, 64), seed=8)
    y, y2 = model(x), converted(x)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)
    y.square().mean().backward()
    y2.square().mean().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), converted.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)


def test_timm_layer_norm_converts_and_fast_norm_is_left_and_named():
    import warnings

    timm_norm = pytest.importorskip("timm.layers.norm")
    model = nn.Sequential(timm_norm.LayerNorm(8), timm_norm.LayerNorm2d(8))
    model[1]._fast_norm = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        normlab.from_torch(model)
    assert type(model[0]) is nl.LayerNorm and type(model[1]) is timm_norm.LayerNorm2d
    assert any("LayerNorm2d (1)" in str(w.message) for w in caught)
