"""The compiled causal attention of packed sequences (``lab/training/csrc/causal_attention.cpp``, loaded by
``normlab.lab.training.attention_kernel``) against an independent float64 computation (each sequence's masked
softmax attention written out in torch float64 math, its gradient by autograd) and against the pure-ATen padded
path it replaces (``padded_causal_attention``), which stays as its fallback:

- the output and the gradient of qkv at random shapes: lengths from 1 to the longest (and 0 between), one sequence
  or several, 1, 2 or 4 heads of 1 to 32 values (vectors and scalar tails), float32 and float64, one and two
  threads, every token a key or each sequence's first K_i (right-padded sequences, padding attending to the real
  keys); a sequence long enough that its scratch is not the thread's kept buffer; ``gradcheck`` in float64;
- results equal bit for bit on one and two threads;
- the padded path equal to the kernel up to rounding, taken where kernels are disabled, the compile failed, or
  dropout is asked for;
- the language model's ``forward_unpadded`` and ``forward`` (the padded batch a BatchNorm model trains on) with and
  without the kernel;
- every bad argument refused with a ValueError naming it, on both paths.

The kernel tests fail (not skip) if the kernel does not compile where a C++ compiler exists.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, autograd_nodes, break_compile, compiled, needs_compiler, num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab.lab.training import attention_kernel as ak
from normlab.lab.training.attention_kernel import packed_causal_attention, padded_causal_attention
from normlab.lab.training.transformer import CharTransformer

# the kernel against float64 math, output and gradient: float32 rounding over sums of at most 64 terms of size ~1
# and exp_u20 (seen: below 2e-6), or float64 rounding (seen: below 1e-13)
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float64: {"atol": 1e-12, "rtol": 1e-12}}
NODE = "PackedCausalAttentionBackward"
NO_KEYS = torch.empty(0, dtype=torch.long)  # the compiled module's "every token a key"


def _kernel():
    return compiled(ak.CAUSAL_ATTENTION)


def _offsets(lengths):
    return F.pad(torch.tensor(lengths, dtype=torch.long).cumsum(0), (1, 0))


def _inputs(lengths, heads, dh, dtype, seed):
    """Fresh standard-normal qkv (R, 3D) (never zeros), its offsets, an upstream gradient (R, D)."""
    g = torch.Generator().manual_seed(seed)
    r, d = sum(lengths), heads * dh
    qkv = torch.randn(r, 3 * d, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(r, d, generator=g, dtype=torch.float64).to(dtype)
    return qkv, _offsets(lengths), grad


def _keys(lengths, seed):
    """A key count for each sequence, 1 to its length (0 for an empty one), drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([int(torch.randint(1, n + 1, (), generator=g)) if n else 0 for n in lengths])


def _reference(qkv, offsets, heads, keys=None):
    """Causal multi-head attention of each sequence, written out: per head, softmax over the keys at or before
    each query (and among its sequence's first ``keys``) of ``q k^T / sqrt(dh)``, times v; heads side by side. In
    qkv's dtype (float64 here)."""
    d = qkv.shape[1] // 3
    dh = d // heads
    outs = [qkv[:0, :d]]
    bounds = offsets.tolist()
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        n = b - a
        if n == 0:
            continue
        q, k, v = qkv[a:b].view(n, 3, heads, dh).unbind(1)  # each (L, heads, dh)
        scores = torch.einsum("jhd,khd->hjk", q, k) / math.sqrt(dh)
        hidden = torch.ones(n, n, dtype=torch.bool).triu(1)  # key after query
        if keys is not None:
            hidden[:, int(keys[i]) :] = True  # padding: no query's key
        scores = scores.masked_fill(hidden, float("-inf"))
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        outs.append(torch.einsum("hjk,khd->jhd", weights, v).reshape(n, d))
    return torch.cat(outs)


def _kernel_and_grad(qkv, offsets, heads, grad, threads=1, keys=None):
    x = qkv.clone().requires_grad_()
    with num_threads(threads):
        out = packed_causal_attention(x, offsets, heads, keys=keys)
        (gx,) = torch.autograd.grad(out, x, grad)
    return out.detach(), gx, out


def _check_float64(lengths, heads, dh, dtype, threads, seed, with_keys=False):
    _kernel()
    qkv, offsets, grad = _inputs(lengths, heads, dh, dtype, seed)
    keys = _keys(lengths, seed) if with_keys else None
    out, gx, node = _kernel_and_grad(qkv, offsets, heads, grad, threads, keys)
    assert NODE in autograd_nodes(node.grad_fn)
    x64 = qkv.double().requires_grad_()
    ref = _reference(x64, offsets, heads, keys)
    (g64,) = torch.autograd.grad(ref, x64, grad.double())
    assert out.dtype == gx.dtype == dtype
    assert_close(out, ref, **TOL[dtype], msg="output")
    assert_close(gx, g64, **TOL[dtype], msg="grad qkv")


@needs_compiler
@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    heads=st.sampled_from([1, 2, 4]),
    dh=st.sampled_from([1, 8, 16, 17, 32]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
    with_keys=st.booleans(),
)
def test_kernel_matches_float64(lengths, heads, dh, dtype, threads, seed, with_keys):
    _check_float64(lengths, heads, dh, dtype, threads, seed, with_keys)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "lengths",
    [[1], [64], [1, 64, 17, 1, 33], [5, 0, 3, 0], [16, 17, 15, 8, 9, 7, 24, 31, 32, 33, 63]],
    ids=["one token", "one sequence", "1 and 64", "empty between", "block edges"],
)
@pytest.mark.parametrize("heads, dh", [(1, 8), (2, 17), (4, 16), (4, 32)])
@pytest.mark.parametrize("with_keys", [False, True])
def test_kernel_matches_float64_at_the_edges(lengths, heads, dh, dtype, with_keys):
    """Lengths 1 and the longest, one sequence, empty sequences between others, and lengths on and beside the
    blocks of 8 queries and the vectors of 8 or 16 keys; every token a key, or each sequence's first few."""
    _check_float64(lengths, heads, dh, dtype, 1, sum(lengths) + heads, with_keys)


@needs_compiler
@pytest.mark.parametrize("keys", [[1, 1, 1], [64, 17, 9], [16, 8, 33], [1, 40, 64]])
def test_key_counts_at_the_edges(keys):
    """Right-padded sequences of 64 tokens whose real keys end at 1, on and beside the blocks and vectors, or at the
    end: the padding's queries see the real keys, the padding's keys and values get no gradient."""
    _kernel()
    qkv, offsets, grad = _inputs([64, 64, 64], 4, 16, torch.float32, 9)
    k = torch.tensor(keys)
    out, gx, _ = _kernel_and_grad(qkv, offsets, 4, grad, keys=k)
    x64 = qkv.double().requires_grad_()
    ref = _reference(x64, offsets, 4, k)
    (g64,) = torch.autograd.grad(ref, x64, grad.double())
    assert_close(out, ref, **TOL[torch.float32], msg="output")
    assert_close(gx, g64, **TOL[torch.float32], msg="grad qkv")
    for i, count in enumerate(keys):
        assert not gx[64 * i + count : 64 * (i + 1), 64:].any()  # padding's keys and values


@needs_compiler
def test_a_long_sequence():
    """A sequence of 730 tokens beside short ones: the backward's scratch (two 736 x 736 float32 tables, over 4 MiB)
    is allocated for the call instead of the thread's kept buffer, which the short calls before and after use."""
    _check_float64([3, 5], 2, 4, torch.float32, 1, 0)
    _check_float64([730, 1, 9], 1, 8, torch.float32, 1, 1)
    _check_float64([3, 5], 2, 4, torch.float32, 1, 2)


@needs_compiler
@pytest.mark.parametrize("heads, dh", [(2, 3), (1, 17)])
def test_gradcheck(heads, dh):
    _kernel()
    qkv, offsets, _ = _inputs([1, 4, 0, 6], heads, dh, torch.float64, 7)
    qkv.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: packed_causal_attention(x, offsets, heads), (qkv,))
    keys = torch.tensor([1, 2, 0, 5])
    assert torch.autograd.gradcheck(lambda x: packed_causal_attention(x, offsets, heads, keys=keys), (qkv,))


@needs_compiler
def test_results_are_the_same_on_one_and_two_threads():
    """The lab's shapes (32 sequences of 16 to 64 tokens, D = 64, 4 heads): output, log-sum-exp and gradient equal
    bit for bit, each (sequence, head) computed by one task in a fixed order."""
    kernel = _kernel()
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(16, 65, (32,), generator=g).tolist()
    qkv, offsets, grad = _inputs(lengths, 4, 16, torch.float32, 4)
    for keys in (NO_KEYS, _keys(lengths, 5)):
        results = []
        for threads in (1, 2):
            with num_threads(threads):
                out, lse = kernel.forward(qkv, offsets, keys, 4)
                results.append((out, lse, kernel.backward(grad, qkv, offsets, keys, out, lse, 4)))
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("keys", [None, [3, 1, 30, 0, 5]])
def test_padded_path_matches_the_kernel(dtype, keys, monkeypatch):
    """The pure-ATen path (scatter into the padded layout, scaled_dot_product_attention, gather), taken with
    NORMLAB_NO_KERNELS=1: the same output and gradient up to rounding, without the kernel's node."""
    _kernel()
    qkv, offsets, grad = _inputs([7, 1, 30, 0, 12], 2, 16, dtype, 11)
    keys = None if keys is None else torch.tensor(keys)
    out, gx, node = _kernel_and_grad(qkv, offsets, 2, grad, keys=keys)
    assert NODE in autograd_nodes(node.grad_fn)
    monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    ref, gref, ref_node = _kernel_and_grad(qkv, offsets, 2, grad, keys=keys)
    assert NODE not in autograd_nodes(ref_node.grad_fn)
    assert_close(out, ref, **TOL[dtype], msg="output")
    assert_close(gx, gref, **TOL[dtype], msg="grad qkv")


@needs_compiler
def test_dropout_takes_the_padded_path():
    """Dropout on the attention weights (the model's dropout in training) is the padded path's
    scaled_dot_product_attention; dropout 0 is the kernel."""
    _kernel()
    qkv, offsets, _ = _inputs([5, 9], 2, 8, torch.float32, 2)
    qkv.requires_grad_()
    assert NODE in autograd_nodes(packed_causal_attention(qkv, offsets, 2, 0.0).grad_fn)
    torch.manual_seed(0)
    dropped = packed_causal_attention(qkv, offsets, 2, 0.5)
    assert NODE not in autograd_nodes(dropped.grad_fn)
    torch.manual_seed(0)
    assert torch.equal(dropped, padded_causal_attention(qkv, offsets, 2, 0.5))
    assert not torch.allclose(dropped, packed_causal_attention(qkv, offsets, 2, 0.0))


@needs_compiler
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_unpadded_forward_with_and_without_the_kernel(norm, monkeypatch):
    """The language model's forward_unpadded takes the kernel (its node in the graph) and gives the logits and
    gradients of the padded path, and of forward at the real positions."""
    _kernel()
    torch.manual_seed(5)
    model = CharTransformer(30, norm, dim=32, layers=2, heads=4, max_len=40)
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, 30, (7, 40), generator=g)
    lengths = torch.tensor([1, 40, 13, 22, 8, 40, 31])
    padding = torch.arange(40)[None, :] >= lengths[:, None]
    tokens[padding] = 30

    def run():
        logits = model.forward_unpadded(tokens, padding)
        grads = torch.autograd.grad(logits.square().mean(), list(model.parameters()))
        return logits, grads

    logits, grads = run()
    assert NODE in autograd_nodes(logits.grad_fn)
    torch.testing.assert_close(logits, model(tokens, padding)[~padding], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    ref_logits, ref_grads = run()
    assert NODE not in autograd_nodes(ref_logits.grad_fn)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@needs_compiler
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_padded_forward_with_and_without_the_kernel(norm, monkeypatch):
    """The language model's forward on the padded batch (BatchNorm's statistics over every position, padding
    included) takes the kernel with each sequence's real tokens as its keys: the logits and gradients of
    ``nn.MultiheadAttention`` under a causal and a key padding mask (forward_multihead), and of the kernel-less
    path; padding not at the end takes the mask (no kernel)."""
    _kernel()
    torch.manual_seed(7)
    model = CharTransformer(30, norm, dim=32, layers=2, heads=4, max_len=40)
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, 30, (6, 40), generator=g)
    lengths = torch.tensor([1, 40, 13, 22, 8, 31])
    padding = torch.arange(40)[None, :] >= lengths[:, None]
    tokens[padding] = 30

    def run(forward):
        logits = forward(tokens, padding)
        return logits, torch.autograd.grad(logits.square().mean(), list(model.parameters()))

    logits, grads = run(model)
    assert NODE in autograd_nodes(logits.grad_fn)
    assert NODE not in autograd_nodes(model(tokens, padding.flip(1)).grad_fn)  # padding first: the mask
    references = {"multihead": run(model.forward_multihead)}
    monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    references["no kernel"] = run(model)
    assert NODE not in autograd_nodes(references["no kernel"][0].grad_fn)
    for name, (ref_logits, ref_grads) in references.items():
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5, msg=name)
        for (param, _), a, b in zip(model.named_parameters(), grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name} {param}")


def test_a_failed_compile_warns_once_and_falls_back(monkeypatch):
    calls = break_compile(monkeypatch, ak.CAUSAL_ATTENTION, "causal_attention.cpp")
    qkv, offsets, _ = _inputs([3, 5], 2, 4, torch.float32, 1)
    with pytest.warns(RuntimeWarning, match=r"packed causal attention CPU kernel could not be compiled \("):
        out = packed_causal_attention(qkv, offsets, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        out2 = packed_causal_attention(qkv, offsets, 2)
    assert calls == [1]
    assert torch.equal(out, out2)
    assert torch.equal(out, padded_causal_attention(qkv, offsets, 2))


def _bad_inputs():
    """(what, qkv, offsets, heads, message) for each refused argument."""
    qkv, offsets, _ = _inputs([3, 5], 2, 4, torch.float32, 1)  # R = 8, D = 8
    return [
        ("heads 0", qkv, offsets, 0, "heads must be at least 1"),
        ("qkv 1-D", qkv.flatten(), offsets, 2, "qkv must be 2-D"),
        ("qkv 3-D", qkv[None], offsets, 2, "qkv must be 2-D"),
        ("columns not 3D", qkv[:, :20], offsets, 2, r"qkv's columns \(20\) must be 3 \* D"),
        ("D not a multiple of heads", qkv, offsets, 3, r"qkv's columns \(24\) must be 3 \* D"),
        ("qkv float16", qkv.half(), offsets, 2, "qkv must be float32 or float64"),
        ("qkv int", qkv.long(), offsets, 2, "qkv must be float32 or float64"),
        ("offsets float", qkv, offsets.float(), 2, "offsets must be int64"),
        ("offsets int32", qkv, offsets.int(), 2, "offsets must be int64"),
        ("offsets empty", qkv, offsets[:0], 2, r"offsets must be 1-D \(N\+1,\)"),
        ("offsets 2-D", qkv, offsets[None], 2, r"offsets must be 1-D \(N\+1,\)"),
        ("offsets first", qkv, torch.tensor([1, 3, 8]), 2, r"offsets\[0\] must be 0"),
        ("offsets decreasing", qkv, torch.tensor([0, 5, 3, 8]), 2, "offsets must be nondecreasing"),
        ("offsets last", qkv, torch.tensor([0, 3, 7]), 2, r"offsets\[-1\] must be qkv's rows R = 8"),
        ("offsets device", qkv, torch.empty(3, dtype=torch.long, device="meta"), 2, "offsets must be on qkv's device"),
    ]


@pytest.mark.parametrize("kernels", ["kernel", "padded"])
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_input_is_refused_naming_the_argument(case, kernels, monkeypatch):
    if kernels == "kernel":
        _kernel()
    else:
        monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    _, qkv, offsets, heads, message = case
    with pytest.raises(ValueError, match=message):
        packed_causal_attention(qkv, offsets, heads)


@pytest.mark.parametrize("kernels", ["kernel", "padded"])
@pytest.mark.parametrize(
    "keys, message",
    [
        (torch.tensor([1.0, 2.0]), r"keys must be int64 of shape \(N,\) = \(2,\)"),
        (torch.tensor([1, 2, 3]), r"keys must be int64 of shape \(N,\) = \(2,\)"),
        (torch.tensor([0, 2]), r"keys\[0\] must be between 1 and the sequence's length 3, got 0"),
        (torch.tensor([3, 6]), r"keys\[1\] must be between 1 and the sequence's length 5, got 6"),
        (torch.empty(2, dtype=torch.long, device="meta"), "keys must be on qkv's device"),
    ],
    ids=["float", "too many", "zero", "past the length", "device"],
)
def test_bad_keys_are_refused_naming_the_argument(keys, message, kernels, monkeypatch):
    if kernels == "kernel":
        _kernel()
    else:
        monkeypatch.setenv("NORMLAB_NO_KERNELS", "1")
    qkv, offsets, _ = _inputs([3, 5], 2, 4, torch.float32, 1)
    with pytest.raises(ValueError, match=message):
        packed_causal_attention(qkv, offsets, 2, keys=keys)


@needs_compiler
def test_the_compiled_module_checks_its_arguments():
    """The module's own checks (it can be called directly): offsets' values, qkv's layout, the backward's tensors."""
    kernel = _kernel()
    qkv, offsets, grad = _inputs([3, 5], 2, 4, torch.float32, 1)
    out, lse = kernel.forward(qkv, offsets, NO_KEYS, 2)
    with pytest.raises(ValueError, match="offsets must be nondecreasing"):
        kernel.forward(qkv, torch.tensor([0, 5, 3, 8]), NO_KEYS, 2)
    with pytest.raises(ValueError, match="qkv must be a contiguous CPU tensor"):
        kernel.forward(qkv.t().contiguous().t(), offsets, NO_KEYS, 2)
    with pytest.raises(ValueError, match="offsets must be int64"):
        kernel.forward(qkv, offsets.int(), NO_KEYS, 2)
    with pytest.raises(ValueError, match=r"keys must be a contiguous int64 \(N,\) CPU tensor \(N = 2"):
        kernel.forward(qkv, offsets, torch.tensor([1, 2, 3]), 2)
    with pytest.raises(ValueError, match=r"keys\[1\] must be between 1 and the sequence's length 5, got 6"):
        kernel.forward(qkv, offsets, torch.tensor([1, 6]), 2)
    with pytest.raises(ValueError, match=r"grad must be contiguous \(8, 8\)"):
        kernel.backward(grad[:, :4], qkv, offsets, NO_KEYS, out, lse, 2)
    with pytest.raises(ValueError, match=r"lse must be contiguous \(8, 2\)"):
        kernel.backward(grad, qkv, offsets, NO_KEYS, out, lse.double(), 2)
