"""The packed ConvNet's training step with its backward written out (``fused_step``) against autograd's step of the
same net: losses, every parameter's gradient and the running statistics, over random packs, batches and shapes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import vs_torch

from normlab.lab.config import make_config
from normlab.lab.training import packed as packed_module
from normlab.lab.training.channel_major_kernel import channel_major_kernel
from normlab.lab.training.fused_step import fused_loss_and_grads, fused_plan
from normlab.lab.training.models import ConvNet
from normlab.lab.training.packed import train_packed

pytestmark = pytest.mark.skipif(channel_major_kernel() is None, reason="the channel-major kernel does not run here")

KERNEL_NORMS = ["batch", "batchrenorm", "group", "layer", "instance"]
TOL = vs_torch(torch.float32)
GRAD_TOL = vs_torch(torch.float32, grad=True)


def _autograd_step(net, x, y, live):
    """Autograd's losses and gradients of ``(losses * live).sum()``, as ``PackedTraining`` takes them."""
    out = net(x)
    losses = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(0)
    grads = torch.autograd.grad((losses * live).sum(), list(net.parameters()))
    return losses.detach(), dict(zip(net.parameters(), grads, strict=True))


def _assert_steps_agree(net, x, y, live, steps=2):
    """Two copies of ``net``, one stepped by autograd and one by the fused step, with SGD between: the same losses,
    gradients and buffers at every step."""
    ref, fused = net, copy.deepcopy(net)
    names = [name for name, _ in ref.named_parameters()]
    for step in range(steps):
        plan = fused_plan(fused, x)
        assert plan is not None
        want_losses, want = _autograd_step(ref, x, y, live)
        got_losses, got = fused_loss_and_grads(fused, plan, x, y, live)
        torch.testing.assert_close(got_losses, want_losses, **TOL, msg=f"losses, step {step}")
        assert set(got) == set(fused.parameters()), "a gradient for every parameter"
        # absolute tolerance on the step's largest gradient: a gradient that is zero in exact arithmetic (the conv
        # bias before InstanceNorm) is rounding on both sides
        scale = max(float(t.abs().max()) for t in want.values())
        for name, p_ref, p in zip(names, ref.parameters(), fused.parameters(), strict=True):
            torch.testing.assert_close(
                got[p], want[p_ref], rtol=GRAD_TOL["rtol"], atol=GRAD_TOL["atol"] * scale, msg=f"{name}, step {step}"
            )
        for (name, b_ref), b in zip(ref.named_buffers(), fused.buffers(), strict=True):
            torch.testing.assert_close(b, b_ref, **TOL, msg=f"{name}, step {step}")
        with torch.no_grad():
            for p_ref, p in zip(ref.parameters(), fused.parameters(), strict=True):
                p_ref.sub_(0.1 * want[p_ref])
                p.sub_(0.1 * got[p])


@settings(max_examples=25, deadline=None)
@given(
    norms=st.lists(st.sampled_from(KERNEL_NORMS), min_size=1, max_size=6),
    batch=st.integers(1, 9),
    length=st.sampled_from([24, 40]),
    width=st.sampled_from([8, 16]),
    depth=st.integers(2, 4),
    dead=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_step_equals_autograds(norms, batch, length, width, depth, dead, seed):
    """Mixed packs (a SplitNorm of the kernel's norms) and single-norm packs, batches 1-9; ``dead``: the first run
    stopped (its loss out of the sum: zero gradients)."""
    torch.manual_seed(seed)
    norm = norms[0] if len(set(norms)) == 1 else norms
    k = len(norms)
    net = ConvNet(1, 10, 1, norm, width=width, depth=depth, copies=k)
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(batch, k, length, generator=g) + 0.3
    y = torch.randint(0, 10, (batch, k), generator=g)
    live = torch.ones(k)
    if dead:
        live[0] = 0.0
    if batch == 1 and any(n in ("batch", "batchrenorm") for n in norms) and length >> (depth - 1) < 2:
        return  # BatchNorm needs more than one value a channel
    _assert_steps_agree(net, x, y, live)
    if dead:
        _, grads = fused_loss_and_grads(net, fused_plan(net, x), x, y, live)
        assert all(float(grads[p].view(k, -1)[0].abs().max()) == 0 for p in [net.head.weight, net.head.bias])


def _net(**kwargs):
    return ConvNet(1, 10, 1, kwargs.pop("norm", ["batch", "group"]), width=8, depth=4, copies=2, **kwargs)


def test_fused_plan_refuses_what_it_does_not_compute():
    """Autograd's step wherever the fused one would not be the same computation: evaluation, hooks, Weight
    Normalization, the grouped form, float64, a norm the kernel does not take, a length that does not halve."""
    x = torch.randn(2, 2, 40)
    assert fused_plan(_net(), x) is not None
    assert fused_plan(_net().eval(), x) is None
    hooked = _net()
    hooked.features[4].register_forward_hook(lambda *a: None)
    assert fused_plan(hooked, x) is None
    assert fused_plan(_net(weight_norm=True), x) is None
    assert fused_plan(_net(packed_form="grouped"), x) is None
    assert fused_plan(_net().double(), x.double()) is None
    assert fused_plan(_net(norm="none"), x) is None
    assert fused_plan(_net(norm=["ghost", "batch"]), x) is None
    assert fused_plan(_net(norm="frn"), x) is None
    assert fused_plan(_net(), torch.randn(2, 2, 36)) is None
    assert fused_plan(ConvNet(1, 10, 1, "batch", width=8, depth=4), torch.randn(2, 1, 40)) is None


def test_packed_training_takes_the_fused_step_and_trains_as_autograd(monkeypatch):
    """train_packed end to end, a mixed pack at batch 2, with the fused step and with autograd's (its plan refused):
    the same losses and accuracies up to float rounding; and the fused step is the one that ran."""
    configs = [
        make_config(study="t", norm=norm, seed=s, lr=0.01, batch_size=2, steps=30, train_subset=128, points=3, depth=3)
        for norm in ("batch", "layer", "batchrenorm")
        for s in (0, 1)
    ]
    calls = []
    real = packed_module.fused_loss_and_grads
    monkeypatch.setattr(packed_module, "fused_loss_and_grads", lambda *a: calls.append(1) or real(*a))
    fused = train_packed(configs)
    assert len(calls) == 30
    monkeypatch.setattr(packed_module, "fused_plan", lambda *a: None)
    reference = train_packed(configs)
    for (fm, fc), (am, ac) in zip(fused, reference, strict=True):
        assert fc["loss"] == pytest.approx(ac["loss"], rel=1e-4, abs=1e-5)
        assert fm["test_acc"] == pytest.approx(am["test_acc"], abs=1e-2)
