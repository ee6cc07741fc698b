"""Every module compiles with torch.compile(fullgraph=True) on CPU inductor: no graph breaks, same results."""

import pytest
import torch
import torch._dynamo
from torch import nn

import normlab.nn as nl

CASES = {
    "BatchNorm1d": (lambda: nl.BatchNorm1d(4), (6, 4)),
    "BatchNorm1d-cumulative": (lambda: nl.BatchNorm1d(4, momentum=None), (6, 4, 3)),
    "BatchNorm2d": (lambda: nl.BatchNorm2d(4), (3, 4, 5, 5)),
    "BatchNorm3d": (lambda: nl.BatchNorm3d(4), (2, 4, 3, 3, 3)),
    "InstanceNorm1d": (lambda: nl.InstanceNorm1d(4, affine=True), (3, 4, 7)),
    "InstanceNorm2d": (lambda: nl.InstanceNorm2d(4, track_running_stats=True), (3, 4, 5, 5)),
    "InstanceNorm3d": (lambda: nl.InstanceNorm3d(4), (2, 4, 3, 3, 3)),
    "LayerNorm": (lambda: nl.LayerNorm([4, 5]), (3, 4, 5)),
    "GroupNorm": (lambda: nl.GroupNorm(2, 4), (3, 4, 5, 5)),
    "RMSNorm": (lambda: nl.RMSNorm(5), (3, 4, 5)),
    "CosineLinear": (lambda: nl.CosineLinear(5, 3, centered=True, scale=5.0), (4, 5)),
    "CosineConv2d": (lambda: nl.CosineConv2d(4, 3, 3, padding=1), (2, 4, 5, 5)),
    "weight_norm": (lambda: nl.weight_norm(nn.Linear(5, 3)), (4, 5)),
    "BatchRenorm2d": (lambda: nl.BatchRenorm2d(4, momentum=0.1), (6, 4, 3, 3)),
    "GhostBatchNorm2d": (lambda: nl.GhostBatchNorm2d(4, virtual_batch_size=2), (6, 4, 3, 3)),
    "FilterResponseNorm": (lambda: nl.FilterResponseNorm(4, learnable_eps=True), (2, 4, 5, 5)),
    "EvoNormB0": (lambda: nl.EvoNormB0(4), (2, 4, 5, 5)),
    "EvoNormS0": (lambda: nl.EvoNormS0(4, num_groups=2), (2, 4, 5, 5)),
    "SwitchableNorm": (lambda: nl.SwitchableNorm(4), (3, 4, 3, 3)),
    "DynamicTanh": (lambda: nl.DynamicTanh(5), (3, 4, 5)),
    "LocalResponseNorm": (lambda: nl.LocalResponseNorm(3), (3, 4, 3, 3)),
    "FrozenBatchNorm2d": (lambda: nl.FrozenBatchNorm2d(4), (3, 4, 3, 3)),
    "StdConv2d": (lambda: nl.StdConv2d(4, 3, 3), (2, 4, 5, 5)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_fullgraph_compile(name):
    make, shape = CASES[name]
    torch.manual_seed(0)
    eager, compiled_module = make(), make()
    if "spectral" not in name:
        compiled_module.load_state_dict(eager.state_dict())
    _compiled_matches_eager(eager, compiled_module, lambda step: torch.randn(shape) * (1 + step) + step)


@pytest.mark.slow
def test_channels_last_batch_norm_compiles_fullgraph():
    """The CPU channels_last training path (its own autograd Function) compiles without a graph break and matches
    eager: output and input gradient in channels_last, the same running statistics."""
    torch.manual_seed(0)
    eager, compiled_module = nl.BatchNorm2d(4), nl.BatchNorm2d(4)
    compiled_module.load_state_dict(eager.state_dict())
    layout = torch.channels_last
    outputs = _compiled_matches_eager(
        eager,
        compiled_module,
        lambda step: (torch.randn(3, 4, 5, 5) * (1 + step) + step).contiguous(memory_format=layout),
    )
    for y, grad in outputs:
        assert y.is_contiguous(memory_format=layout) and grad.is_contiguous(memory_format=layout)


def _compiled_matches_eager(eager, compiled_module, make_input, steps: int = 2):
    """Two training steps of ``eager`` and ``compiled_module`` (compiled fullgraph) on the same inputs: outputs,
    input gradients and buffers agree. Returns the compiled side's (output, input gradient) per step."""
    compiled = torch.compile(compiled_module, fullgraph=True, backend="inductor")
    torch._dynamo.reset()
    outputs = []
    for step in range(steps):
        x = make_input(step)
        x_e, x_c = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y_e, y_c = eager(x_e), compiled(x_c)
        torch.testing.assert_close(y_c, y_e, rtol=1e-4, atol=1e-5)
        y_e.square().sum().backward()
        y_c.square().sum().backward()
        torch.testing.assert_close(x_c.grad, x_e.grad, rtol=1e-4, atol=1e-4)
        outputs.append((y_c, x_c.grad))
    for (n, b_e), (_, b_c) in zip(eager.named_buffers(), compiled_module.named_buffers(), strict=True):
        torch.testing.assert_close(b_c, b_e, rtol=1e-5, atol=1e-6, msg=n)
    return outputs


@pytest.mark.slow
def test_power_norm_stays_correct_inside_a_compiled_model():
    """PowerNorm's backward updates a buffer, so its training step is excluded from compilation (a graph break,
    hence no fullgraph); a compiled model must still match eager over several steps."""
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(5, 4), nl.PowerNorm(4), nn.ReLU())
    other = nn.Sequential(nn.Linear(5, 4), nl.PowerNorm(4), nn.ReLU())
    other.load_state_dict(eager.state_dict())
    compiled = torch.compile(other)
    torch._dynamo.reset()
    for step in range(3):
        x = torch.randn(6, 5) + step
        x_e, x_c = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        eager(x_e).square().sum().backward()
        compiled(x_c).square().sum().backward()
        torch.testing.assert_close(x_c.grad, x_e.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other[1].running_nu, eager[1].running_nu)
