"""The language model's fast attention computes what ``nn.MultiheadAttention`` computes (same parameters, same
state_dict keys): forward outputs and gradients within float32 rounding, for every norm the lab trains it with."""

import copy

import pytest
import torch
import torch.nn.functional as F

from normlab.lab.training.transformer import CharTransformer, attention_mask

NORMS = ["layer", "rms", "dyt", "batch"]


def _batch(n=6, t=24, vocab=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, t), generator=g)
    lengths = torch.randint(t // 4, t + 1, (n,), generator=g)
    padding = torch.arange(t)[None, :] >= lengths[:, None]
    tokens[padding] = vocab
    targets = torch.randint(0, vocab, (n, t), generator=g).masked_fill(padding, -100)
    return tokens, targets, padding


@pytest.mark.parametrize("norm", NORMS)
def test_fast_attention_equals_multihead_attention(norm):
    torch.manual_seed(1)
    model = CharTransformer(30, norm, dim=32, layers=2, heads=4, max_len=24)
    ref = copy.deepcopy(model)
    tokens, targets, padding = _batch()
    out, expected = model(tokens, padding), ref.forward_multihead(tokens, padding)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # pad positions too (BatchNorm sees them)
    grads = torch.autograd.grad(F.cross_entropy(out.transpose(1, 2), targets), list(model.parameters()))
    ref_grads = torch.autograd.grad(F.cross_entropy(expected.transpose(1, 2), targets), list(ref.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    for (ka, va), (kb, vb) in zip(
        model.state_dict().items(), ref.state_dict().items(), strict=True
    ):  # BN's running statistics
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6)


def test_state_dict_keys_are_unchanged():
    model = CharTransformer(30, "layer", dim=32, layers=2, heads=4, max_len=24)
    keys = set(model.state_dict())
    assert {
        "blocks.0.attn.in_proj_weight",
        "blocks.0.attn.in_proj_bias",
        "blocks.0.attn.out_proj.weight",
        "blocks.0.attn.out_proj.bias",
        "blocks.1.mlp.0.weight",
        "pos",
        "embed.weight",
        "head.weight",
    } <= keys


def test_attention_mask_is_causal_and_hides_padding():
    padding = torch.tensor([[False, False, True], [False, False, False]])
    allowed = attention_mask(padding)
    assert allowed.shape == (2, 1, 3, 3)
    assert allowed[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert allowed[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def _assert_real_rows(model, full, twin, real, targets, padding):
    """``real`` (``twin``'s logits of the real positions) are ``full``'s rows there (``model``'s logits of every
    position), with the same mean loss over the real targets and the same gradients for every parameter."""
    torch.testing.assert_close(real, full[~padding], rtol=1e-5, atol=1e-5)
    loss, real_loss = F.cross_entropy(full.transpose(1, 2), targets), F.cross_entropy(real, targets[~padding])
    torch.testing.assert_close(real_loss, loss, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    real_grads = torch.autograd.grad(real_loss, list(twin.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), real_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("norm", ["layer", "rms", "dyt"])
def test_unpadded_forward_equals_the_real_positions(norm):
    """forward_unpadded (the real tokens only) gives the real positions' logits and the same mean loss and
    gradients as forward, for the norms that are not batch dependent; padding anywhere but at the end is refused."""
    torch.manual_seed(2)
    model = CharTransformer(30, norm, dim=32, layers=2, heads=4, max_len=24)
    tokens, targets, padding = _batch()
    _assert_real_rows(model, model(tokens, padding), model, model.forward_unpadded(tokens, padding), targets, padding)
    with pytest.raises(ValueError, match="end of each sequence"):
        model.forward_unpadded(tokens, padding.flip(1))


@pytest.mark.parametrize("norm, unpadded", [("layer", True), ("rms", True), ("dyt", True), ("batch", False)])
def test_the_lab_trains_per_token_norms_on_the_real_tokens_only(norm, unpadded):
    """CharLMTraining takes the unpadded forward exactly when the norm is per token; a step gives the loss and the
    gradients the padded batch gives, within float32 rounding (not the parameters after AdamW steps: Adam scales the
    rounding noise of a gradient that is 0 in exact arithmetic, the key bias's, up to a whole step)."""
    from normlab.lab.config import make_config
    from normlab.lab.training.train import CharLMTraining

    config = make_config("char_lm", study="t", norm=norm, seed=0, steps=4, batch_size=4, seq_len=32, lr=1e-3)
    trainings = []
    for _ in range(2):
        torch.manual_seed(config.seed)  # the model's initialization, as train_char_lm seeds it
        trainings.append(CharLMTraining(config))
    fast, padded = trainings
    assert fast.unpadded is unpadded
    padded.unpadded = False
    (a,), (b,) = fast.step(0, [0], False), padded.step(0, [0], False)
    assert a == pytest.approx(b, rel=1e-5)
    for (name, p), q in zip(fast.model.named_parameters(), padded.model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("first", [False, True], ids=["right-padded", "padding-first"])
@pytest.mark.parametrize("norm", NORMS)
def test_real_only_head_gives_the_real_positions_logits_loss_and_gradients(norm, first):
    """forward(..., real_only=True) (what the lab trains a BatchNorm model with) runs every layer on the padded batch
    and the head on the real rows only: the rows of forward's logits at the real positions, and the loss and every
    gradient of the padded batch's loss with its padding ignored, on either attention path."""
    torch.manual_seed(3)
    model = CharTransformer(30, norm, dim=32, layers=2, heads=4, max_len=24)
    twin = copy.deepcopy(model)  # BatchNorm's running statistics move with each forward
    tokens, targets, padding = _batch(seed=5)
    if first:  # padding before the real tokens: the masked attention
        tokens, targets, padding = tokens.flip(1), targets.flip(1), padding.flip(1)
    real = twin(tokens, padding, real_only=True)
    assert real.shape == (int((~padding).sum()), 30)
    _assert_real_rows(model, model(tokens, padding), twin, real, targets, padding)


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5), (0, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_computes_what_f_linear_computes(shape, with_bias):
    """The language model's linear (a product, then the bias added in place) gives F.linear's output and gradients;
    its Linear is an nn.Linear with nn.Linear's state_dict."""
    from normlab.lab.training.transformer import Linear, linear

    g = torch.Generator().manual_seed(len(shape) + with_bias)
    x = torch.randn(shape, generator=g, requires_grad=True)
    weight = torch.randn(6, 5, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g, requires_grad=True) if with_bias else None
    leaves = [t for t in (x, weight, bias) if t is not None]
    out, expected = linear(x, weight, bias), F.linear(x, weight, bias)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    grad = torch.randn(expected.shape, generator=g)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(expected, leaves, grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    module = Linear(5, 6)
    assert isinstance(module, torch.nn.Linear)
    assert module.state_dict().keys() == torch.nn.Linear(5, 6).state_dict().keys()
    torch.testing.assert_close(module(x), F.linear(x, module.weight, module.bias), rtol=1e-6, atol=1e-6)
