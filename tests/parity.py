"""Harness: run a torch.nn module and its normlab twin side by side for several steps and compare everything."""

import torch
from helpers import assert_close
from tolerances import vs_torch

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def clone_pair(theirs: torch.nn.Module, ours: torch.nn.Module, seed: int = 0) -> None:
    """Give ``ours`` the same (random, non-trivial, seeded so a failure replays) parameters and buffers as
    ``theirs``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.5 + 1.0).to(p.dtype))
        for name, b in theirs.named_buffers():
            if b.is_floating_point():
                noise = torch.rand(b.shape, generator=g) + 0.5 if "var" in name else torch.randn(b.shape, generator=g)
                b.copy_(noise.to(b.dtype))
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected


def step(module, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return y.detach(), x.grad.detach(), grads


def compare_steps(theirs, ours, inputs, dtype, check_format=None):
    """Feed the same inputs to both modules; compare outputs, input/parameter gradients and buffers each step."""
    for i, x in enumerate(inputs):
        dy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + i)).to(dtype)
        if check_format is not None:
            dy = dy.contiguous(memory_format=check_format)
        y_t, dx_t, g_t = step(theirs, x, dy)
        y_o, dx_o, g_o = step(ours, x, dy)
        assert_close(y_o, y_t, **vs_torch(dtype), msg=f"step {i} output")
        assert_close(dx_o, dx_t, **vs_torch(dtype, grad=True), msg=f"step {i} input grad")
        assert g_o.keys() == g_t.keys()
        for name in g_t:
            assert_close(g_o[name], g_t[name], **vs_torch(dtype, grad=True), msg=f"step {i} grad {name}")
        buffers_t, buffers_o = dict(theirs.named_buffers()), dict(ours.named_buffers())
        assert buffers_o.keys() == buffers_t.keys()
        for name in buffers_t:
            assert buffers_o[name].dtype == buffers_t[name].dtype
            assert_close(buffers_o[name], buffers_t[name], **vs_torch(dtype), msg=f"step {i} buffer {name}")
        if check_format is not None:
            assert y_o.is_contiguous(memory_format=check_format), "channels_last input must give channels_last output"
