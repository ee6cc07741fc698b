"""The packed engine: K runs trained as one model compute what each computes alone."""

import math

import pytest
import torch

from normlab.lab.config import make_config
from normlab.lab.training.channel_major import packed_norm
from normlab.lab.training.models import make_norm
from normlab.lab.training.packed import PackedSGD, pack_key, pack_state, plan_packs, train_packed, unpack_state
from normlab.lab.training.train import build_classifier, build_packed_classifier, classifier_data, run
from normlab.registry import available_norms, can_pack

PACKED_NORMS = [n for n in available_norms() if can_pack(n, 1)]


def _configs(norm, **kw):
    base = dict(
        study="t",
        norm=norm,
        batch_size=4,
        steps=8,
        train_subset=256,
        points=4,
        depth=3,
        lr_schedule="cosine",
        momentum=0.9,
    )
    base.update(kw)
    # seeds, learning rates and weight decays differ inside the pack; everything else is shared
    return [make_config(seed=s, lr=0.004 * (1 + s), weight_decay=1e-3 * s, **base) for s in (3, 4, 5)]


def test_every_packable_norm_is_tested():
    assert {"batch", "group", "layer", "instance", "none", "ws", "evonorm_s0"} <= set(PACKED_NORMS)
    assert not can_pack("switchable", 1) and not can_pack("dyt", 1) and not can_pack("lrn", 1)


@pytest.mark.parametrize("norm", PACKED_NORMS)
def test_packed_equals_alone(norm):
    configs = _configs(norm)
    packed = train_packed(configs)
    for config, (pm, pc) in zip(configs, packed, strict=True):
        am, ac = run(config)
        assert pc["step"] == ac["step"]
        assert pc["loss"] == pytest.approx(ac["loss"], rel=1e-5, abs=1e-6)
        assert pc["weight_norm"] == pytest.approx(ac["weight_norm"], rel=1e-5)
        assert pm["test_acc"] == pytest.approx(am["test_acc"], abs=2e-3)  # at most 2 of 1000 test examples
        assert not pm["diverged"] and not am["diverged"]
        assert pm["train_loss"] == pytest.approx(am["train_loss"], rel=1e-5, abs=1e-6)


def test_runs_of_several_norms_share_a_pack():
    """A mixed pack: each norm layer is split into the norms' parts; every run still computes what it does alone,
    its gradient-predictiveness probe included."""
    configs = [
        c for norm in ("batch", "group", "instance", "layer") for c in _configs(norm, grad_predictiveness=True)[:2]
    ]
    configs.insert(3, configs.pop(0))  # not sorted by norm: a batch run between group runs
    assert len({pack_key(c) for c in configs}) == 1
    for config, (pm, pc) in zip(configs, train_packed(configs), strict=True):
        am, ac = run(config)
        assert pc["loss"] == pytest.approx(ac["loss"], rel=1e-5, abs=1e-6), config.norm
        assert pc["grad_pred"] == pytest.approx(ac["grad_pred"], rel=1e-4)
        assert pm["test_acc"] == pytest.approx(am["test_acc"], abs=2e-3)


def test_weight_standardization_packs_only_with_itself():
    assert pack_key(_configs("ws")[0]) != pack_key(_configs("group")[0])
    assert pack_key(_configs("batch")[0]) == pack_key(_configs("group")[0])


def test_packed_parameters_equal_alone_after_training():
    """Parameters and running statistics themselves, not only the losses, for BN with weight norm and a stream."""
    configs = _configs("batch", weight_norm=True, stream="sorted", chunk=5)
    c = configs[0]
    data = classifier_data(c)
    singles = []
    for config in configs:
        torch.manual_seed(config.seed)
        singles.append(build_classifier(config, data))
    packed = build_packed_classifier(configs, data)
    pack_state(singles, packed)
    copies = [build_classifier(config, data) for config in configs]
    unpack_state(packed, copies)
    for a, b in zip(singles, copies, strict=True):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)


def test_a_diverging_run_does_not_disturb_the_others():
    configs = [
        make_config(study="t", norm="none", seed=s, batch_size=8, steps=30, train_subset=256, points=10, lr=lr)
        for s, lr in ((0, 0.05), (1, 50.0))
    ]
    (good, _), (bad, _) = train_packed(configs)
    alone, _ = run(configs[0])
    assert bad["diverged"] == 1.0 and bad["test_acc"] == pytest.approx(0.1)
    assert good["diverged"] == 0.0 and good["test_acc"] == pytest.approx(alone["test_acc"], abs=2e-3)


def test_plan_packs_groups_by_everything_but_seed_lr_and_decay():
    a = _configs("batch")
    b = _configs("group")
    probe = make_config(study="t", norm="batch", seed=0, record_batch_stats=True)  # a hook on one model: alone
    lm = make_config("char_lm", study="t", norm="layer", seed=0)
    items = plan_packs(a + b + [probe, lm], max_copies=2)
    assert sorted(len(i) for i in items) == [1, 1, 2, 2, 2]  # 6 runs of two norms: 3 packs of 2, norms together
    assert pack_key(probe) is None and pack_key(lm) is None
    assert pack_key(make_config(study="t", norm="switchable", seed=0)) is None
    assert all(len({pack_key(c) for c in item}) == 1 for item in items)


def test_packed_run_is_deterministic():
    configs = _configs("group")[:2]
    first, second = train_packed(configs), train_packed(configs)
    assert [m["test_acc"] for m, _ in first] == [m["test_acc"] for m, _ in second]
    assert all(math.isfinite(v) for _, c in first for v in c["loss"])


def test_packed_sgd_is_sgd_per_run_on_flat_parameters():
    """The optimizer's flat tensor: parameters stay views of it (a state dict loaded reaches it), and each run's step
    is torch's SGD with that run's rate and decay (up to float rounding); its state round-trips."""
    configs = _configs("batch")
    data = classifier_data(configs[0])
    singles = []
    for config in configs:
        torch.manual_seed(config.seed)
        singles.append(build_classifier(config, data))
    packed = build_packed_classifier(configs, data)
    opt = PackedSGD(
        packed, pack_state(singles, packed), [c.lr for c in configs], [c.weight_decay for c in configs], 0.9
    )
    sgds = [
        torch.optim.SGD(m.parameters(), lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
        for m, c in zip(singles, configs, strict=True)
    ]
    x = data.x_train[:4]
    for _ in range(3):
        opt.zero_grad()
        packed(x.repeat(1, len(configs), 1)).sum().backward()
        opt.step(0.5)
        for model, sgd, c in zip(singles, sgds, configs, strict=True):
            sgd.param_groups[0]["lr"] = c.lr * 0.5
            sgd.zero_grad()
            model(x).sum().backward()
            sgd.step()
    copies = [build_classifier(c, data) for c in configs]
    unpack_state(packed, copies)
    for a, b in zip(singles, copies, strict=True):
        for (name, va), vb in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.allclose(va, vb, rtol=1e-5, atol=1e-6), name
    state = opt.state_dict()
    packed.load_state_dict({k: torch.zeros_like(v) for k, v in packed.state_dict().items()})
    assert float(opt.flat.abs().sum()) == 0.0  # the parameters are views of the flat tensor
    opt.load_state_dict(state)
    assert opt.buffer is not None and all(
        torch.equal(a, b) for a, b in zip(opt.state_dict()["buffers"], state["buffers"], strict=True)
    )


def test_packed_instance_norm_is_its_group_norm():
    """The packed nets' InstanceNorm runs as the GroupNorm of one channel a group: the module's output and gradients."""
    norm = make_norm("instance", 8, 1, copies=3)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 24, 10, requires_grad=True)
    fast = packed_norm(norm, x)
    (gx_fast,) = torch.autograd.grad(fast.square().sum(), x)
    slow = norm(x)
    (gx_slow,) = torch.autograd.grad(slow.square().sum(), x)
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(gx_fast, gx_slow, atol=1e-4)
