"""The packed ConvNet's two forms, grouped convolutions and batched matrix products, each compute what the K nets
compute alone: outputs, gradients and running statistics, for every norm that packs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_nodes

from normlab.lab.config import make_config
from normlab.lab.training import channel_major, models
from normlab.lab.training.channel_major_kernel import channel_major_kernel
from normlab.lab.training.conv_forms import INPLACE_MIN_BATCH, ParityConv, position_order, shift_runs
from normlab.lab.training.models import MATMUL_MIN_BATCH, ConvNet, SplitNorm, pack_size
from normlab.lab.training.packed import pack_state, train_packed, unpack_state
from normlab.lab.training.train import build_packed_classifier, classifier_data, run
from normlab.registry import available_norms, can_pack

PACKED_NORMS = [n for n in available_norms() if can_pack(n, 1)]
K, N = 3, 8


def _nets(norm, weight_norm=False):
    singles = []
    for seed in range(K):
        torch.manual_seed(seed)
        singles.append(ConvNet(1, 10, 1, norm, width=8, depth=4, weight_norm=weight_norm))
    packed = ConvNet(1, 10, 1, norm, width=8, depth=4, weight_norm=weight_norm, copies=K)
    pack_state(singles, packed)
    return singles, packed


@pytest.mark.parametrize("weight_norm,length", [(False, 40), (True, 40), (False, 42)])
@pytest.mark.parametrize("norm", PACKED_NORMS)
def test_both_forms_equal_the_nets_alone(norm, weight_norm, length):
    """Length 40 (the lab's MNIST-1D) and 42 (odd lengths after the first stride-2 conv: the im2col's border)."""
    singles, packed = _nets(norm, weight_norm)
    _assert_forms_equal_alone(singles, packed, length, matmul=norm != "ws")


@pytest.mark.parametrize("length", [40, 42])
def test_a_mixed_pack_in_both_forms_equals_the_nets_alone(length):
    """A mixed pack (SplitNorm: BatchNorm, Batch Renorm, GroupNorm, LayerNorm and InstanceNorm runs side by side),
    each part on its runs' slice of the channel-major maps in the matmul form, through the kernel where it runs."""
    norms = ["batch", "group", "group", "layer", "instance", "batchrenorm", "batch"]
    singles = []
    for seed, norm in enumerate(norms):
        torch.manual_seed(seed)
        singles.append(ConvNet(1, 10, 1, norm, width=8, depth=4))
    packed = ConvNet(1, 10, 1, norms, width=8, depth=4, copies=len(norms))
    pack_state(singles, packed)
    assert isinstance(packed.features[1], SplitNorm) and len(packed.features[1].parts) == 6
    _assert_forms_equal_alone(singles, packed, length)


@pytest.mark.parametrize("batch", [2, 5, 8])
@pytest.mark.parametrize("taps", [True, False])
def test_a_mixed_pack_in_one_node_equals_a_node_a_part(batch, taps, monkeypatch):
    """A mixed pack whose every part the kernel runs: its norm layers as one SplitNormReLU node (each part's kernel
    writing its slice of one output, its gradient into its slice of one grad) and as a node a part and a
    concatenation (``SPLIT_FUSED`` False): the same kernel calls, so losses, gradients and running statistics equal
    bit for bit over two steps; with the next conv's taps (``TAPS_MIN_BATCH``) and without."""
    if channel_major_kernel() is None:
        pytest.skip("the channel-major kernel does not run here")
    monkeypatch.setattr(models, "TAPS_MIN_BATCH", 1 if taps else 10**9)
    norms = ["batch", "group", "layer", "instance", "batchrenorm", "batch", "group"]
    torch.manual_seed(0)
    packed = ConvNet(1, 10, 1, norms, width=8, depth=4, copies=len(norms))
    packed.packed_form = "matmul"
    nets = {fused: copy.deepcopy(packed) for fused in (True, False)}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, len(norms), 40, generator=g)
    y = torch.randint(0, 10, (batch, len(norms)), generator=g)
    for _step in range(2):
        results = {}
        for fused, net in nets.items():
            monkeypatch.setattr(channel_major, "SPLIT_FUSED", fused)
            out = net(x)
            assert ("SplitNormReLUBackward" in autograd_nodes(out.grad_fn)) == fused
            loss = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(0)
            grads = torch.autograd.grad(loss.sum(), list(net.parameters()))
            with torch.no_grad():
                for p, gr in zip(net.parameters(), grads, strict=True):
                    p.sub_(0.1 * gr)
            results[fused] = (loss, *grads, *net.buffers())
        for a, b in zip(results[True], results[False], strict=True):
            assert torch.equal(a, b)


def _assert_forms_equal_alone(singles, packed, length, matmul=True):
    """Both forms of ``packed`` compute what ``singles`` compute alone, over two SGD steps: losses, gradients and
    buffers. ``matmul``: whether the matmul form applies (Weight Standardization's conv: grouped only)."""
    K = len(singles)
    forms = {}
    for form in ("grouped", "matmul"):
        net = copy.deepcopy(packed)
        net.packed_form = form
        forms[form] = net
    if matmul:
        assert forms["matmul"].uses_matmul(N) and not forms["grouped"].uses_matmul(N)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, K, length, generator=g)
    y = torch.randint(0, 10, (N, K), generator=g)
    for _step in range(2):  # two steps: the second sees the first's running statistics and updated weights
        alone = [F.cross_entropy(net(x[:, k : k + 1]), y[:, k]) for k, net in enumerate(singles)]
        alone_grads = [
            torch.autograd.grad(loss, list(net.parameters())) for loss, net in zip(alone, singles, strict=True)
        ]
        for form, net in forms.items():
            out = net(x)  # (N, K, classes)
            losses = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(0)
            torch.testing.assert_close(losses, torch.stack(alone).detach(), rtol=1e-5, atol=1e-6, msg=form)
            grads = torch.autograd.grad(losses.sum(), list(net.parameters()))
            unpacked = [copy.deepcopy(s) for s in singles]
            for p, gr in zip(net.parameters(), grads, strict=True):
                p.grad = gr
            with torch.no_grad():
                for p in net.parameters():  # grads as a state of their own: unpack them like parameters
                    p.copy_(p.grad)
            unpack_state(net, unpacked)
            for single, grad_net, ref in zip(singles, unpacked, alone_grads, strict=True):
                for (name, p), r in zip(grad_net.named_parameters(), ref, strict=True):
                    scale = max(float(t.abs().max()) for t in ref)
                    torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-5 * scale, msg=f"{form} {name}")
                for (name, b), rb in zip(grad_net.named_buffers(), single.buffers(), strict=True):
                    torch.testing.assert_close(b, rb, rtol=1e-5, atol=1e-6, msg=f"{form} {name}")
        with torch.no_grad():  # one SGD step on every copy, then re-pack
            for net, grads in zip(singles, alone_grads, strict=True):
                for p, gr in zip(net.parameters(), grads, strict=True):
                    p.sub_(0.1 * gr)
            state = copy.deepcopy(singles)
            for net in forms.values():
                pack_state(state, net)
                state = copy.deepcopy(singles)


def test_auto_form_is_the_measured_faster_one(monkeypatch):
    """matmul at every batch for BatchNorm, mean-only BatchNorm and no norm; for GroupNorm, LayerNorm, InstanceNorm
    and Batch Renorm at every batch where the channel-major kernel runs (GroupNorm and LayerNorm from
    MATMUL_MIN_BATCH where it does not); for a mixed pack of such norms at every batch where it runs; grouped for
    the rest; an explicit form is taken as given."""
    names = ("batch", "meanonly", "none", "group", "layer", "instance", "batchrenorm", "ghost")
    nets = {norm: _nets(norm)[1] for norm in names}
    assert all(net.packed_form == "auto" for net in nets.values())
    assert all(nets[norm].uses_matmul(2, kernel=False) for norm in ("batch", "meanonly", "none"))
    for norm in ("group", "layer", "instance"):
        net = nets[norm]
        assert net.uses_matmul(1, kernel=True) and net.uses_matmul(2, kernel=True)
        assert net.uses_matmul(2) == (channel_major_kernel() is not None)  # the default: the kernel where it runs
        assert not copy.deepcopy(net).double().uses_matmul(2)  # float64: the composites
        assert net.uses_matmul(MATMUL_MIN_BATCH, kernel=False) == (norm != "instance")
        assert not net.uses_matmul(MATMUL_MIN_BATCH - 1, kernel=False)
        with monkeypatch.context() as m:
            m.setenv("NORMLAB_NO_KERNELS", "1")
            assert not net.uses_matmul(2) and net.uses_matmul(MATMUL_MIN_BATCH) == (norm != "instance")
    assert not nets["ghost"].uses_matmul(64)  # a norm the kernel does not take: grouped
    brn = nets["batchrenorm"]
    assert brn.uses_matmul(1, kernel=True) and not brn.uses_matmul(64, kernel=False)
    mixed = ConvNet(1, 10, 1, ["batch", "group", "instance", "batchrenorm"], width=8, depth=2, copies=4)
    assert mixed.uses_matmul(1, kernel=True) and mixed.uses_matmul(64, kernel=True)
    assert not mixed.uses_matmul(64, kernel=False)  # InstanceNorm off the kernel: its module, a copy each way
    assert ConvNet(1, 10, 1, ["batch", "group"], width=8, depth=2, copies=2).uses_matmul(64, kernel=False)
    assert not ConvNet(1, 10, 1, ["batch", "ghost"], width=8, depth=2, copies=2).uses_matmul(64, kernel=True)
    nets["ghost"].packed_form = "matmul"
    assert nets["ghost"].uses_matmul(2)
    nets["batch"].packed_form = "grouped"
    assert not nets["batch"].uses_matmul(64)
    assert not ConvNet(1, 10, 1, "batch").uses_matmul(64)  # one net: no packed form
    with pytest.raises(ValueError, match="packed_form"):
        ConvNet(1, 10, 1, "batch", copies=2, packed_form="bmm")


@pytest.mark.parametrize(
    "norm,batch",
    [("batch", 8), ("meanonly", 8), ("none", 8), ("group", MATMUL_MIN_BATCH), ("layer", MATMUL_MIN_BATCH)],
)
def test_packed_training_in_the_matmul_form_equals_alone(norm, batch):
    """train_packed end to end at a batch where the lab's packs take the matmul form."""
    configs = [
        make_config(
            study="t",
            norm=norm,
            seed=s,
            lr=0.004 * (1 + s),
            weight_decay=1e-3 * s,
            batch_size=batch,
            steps=8,
            train_subset=256,
            points=4,
            depth=3,
            momentum=0.9,
        )
        for s in (3, 4)
    ]
    c = configs[0]
    assert build_packed_classifier([c, c], classifier_data(c)).uses_matmul(batch)
    for config, (pm, pc) in zip(configs, train_packed(configs), strict=True):
        am, ac = run(config)
        assert pc["loss"] == pytest.approx(ac["loss"], rel=1e-5, abs=1e-6)
        assert pm["test_acc"] == pytest.approx(am["test_acc"], abs=2e-3)
        assert pm["train_loss"] == pytest.approx(am["train_loss"], rel=1e-5, abs=1e-6)


def test_pack_size_by_batch():
    assert [pack_size(b) for b in (1, 2, 4, 8, 16, 32, 64, 128, 1024)] == [64, 64, 64, 32, 32, 16, 8, 4, 4]
    assert pack_size(32, most=4) == 4 and pack_size(2, most=16) == 16
    with pytest.raises(ValueError):
        pack_size(0)


def test_position_order_and_its_shift_runs():
    """Each half of a stored order is the next layer's order; the runs give every output position l > 0 tap 0 from
    the odd half's position l - 1, and position 0 none."""
    assert position_order(8, 2) == (0, 4, 2, 6, 1, 5, 3, 7)
    assert sorted(position_order(40, 3)) == list(range(40))
    with pytest.raises(ValueError):
        position_order(42, 2)
    for length, halvings in ((40, 3), (20, 2), (10, 1), (8, 3)):
        out = position_order(length // 2, halvings - 1)
        odd = [(2 * j + 1) for j in out]  # the input position each slot of the odd half holds
        seen = {}
        for out_slot, odd_slot, count in shift_runs(length, halvings):
            for i in range(count):
                seen[out_slot + i] = odd[odd_slot + i]
        assert seen == {i: 2 * p - 1 for i, p in enumerate(out) if p > 0}


@pytest.mark.parametrize("n", [5, INPLACE_MIN_BATCH])
@pytest.mark.parametrize("length,halvings", [(40, 3), (20, 2), (10, 1), (16, 4)])
def test_parity_conv_is_the_strided_conv(length, halvings, n):
    """ParityConv on maps in position_order equals a grouped stride-2 conv1d (without bias): output and gradients
    (against conv1d's; a float64 gradcheck at the small batch), both ways of adding tap 0 (small batch and from
    INPLACE_MIN_BATCH)."""
    k, c, c_out = 2, 3, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, c, length, n, generator=g, dtype=torch.float64)  # natural order
    w = torch.randn(k * c_out, c, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv1d(x.permute(3, 0, 1, 2).reshape(n, k * c, length), w, stride=2, padding=1, groups=k)
    order = list(position_order(length, halvings))
    stored = x[:, :, order].contiguous().requires_grad_()
    out = ParityConv.apply(stored, w, halvings).view(k, c_out, length // 2, n)
    back = torch.empty_like(out)
    back[:, :, list(position_order(length // 2, halvings - 1))] = out
    back = back.permute(3, 0, 1, 2).reshape(n, k * c_out, -1)
    torch.testing.assert_close(back, ref)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    gx, gw = torch.autograd.grad(back, (stored, w), upstream)
    natural = x.clone().requires_grad_()
    ref = F.conv1d(natural.permute(3, 0, 1, 2).reshape(n, k * c, length), w, stride=2, padding=1, groups=k)
    rx, rw = torch.autograd.grad(ref, (natural, w), upstream)
    torch.testing.assert_close(gx, rx[:, :, order])
    torch.testing.assert_close(gw, rw)
    if n < INPLACE_MIN_BATCH:
        assert torch.autograd.gradcheck(lambda a, b: ParityConv.apply(a, b, halvings), (stored, w))


@pytest.mark.parametrize("taps", [False, True])
def test_matmul_form_takes_the_parity_convs_where_lengths_halve(taps, monkeypatch):
    """Length 40 (4 blocks: halves 3 times) runs without im2col; 42 falls back to it (both are compared with the
    nets alone above). Where the norm's kernel writes the next conv's taps (``models.TAPS_MIN_BATCH``), the
    stride-2 convs are plain products: no ParityConv."""
    monkeypatch.setattr(models, "TAPS_MIN_BATCH", 1 if taps else 10**9)
    kernel = taps and channel_major_kernel() is not None
    net = _nets("batch")[1]
    net.packed_form = "matmul"
    calls = []
    original = ParityConv.apply

    def counting(*args):
        calls.append(args[0].shape)
        return original(*args)

    ParityConv.apply = counting
    try:
        net(torch.randn(N, K, 40))
        assert len(calls) == (0 if kernel else 3)
        net(torch.randn(N, K, 42))
        assert len(calls) == (0 if kernel else 3)
    finally:
        ParityConv.apply = original
