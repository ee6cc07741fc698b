"""Hugging Face models built from their configs (random weights, no download): from_torch converts every norm,
and logits and gradients equal the original's: exactly in float32, within the tolerance table's bf16 row in
bfloat16 (the converted norms follow each family's order of casts)."""

import copy
import warnings

import pytest
import torch
from tolerances import vs_reference

import normlab
import normlab.nn as nl

transformers = pytest.importorskip("transformers")

SMALL = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "RMSNorm"),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}, "RMSNorm"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, "RMSNorm"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}, "RMSNorm"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}, "RMSNorm"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}, "RMSNorm"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}, "RMSNorm"),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {"pad_token_id": 0, "eos_token_id": 1}, "LayerNorm"),
}


def _build(family: str, dtype=torch.float32):
    config_name, model_name, extra, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**{**SMALL, **extra})
    model = getattr(transformers, model_name)(config).to(dtype).eval()
    with torch.no_grad():  # norm weights away from their init (ones, or zeros for Gemma's offset form)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.3 * torch.randn(p.shape) + (0.0 if "gemma" in family else 1.0))
    return model


def _t5(dtype=torch.float32):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    model = transformers.T5ForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    return model


def _outputs(model, t5: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 96, (2, 12), generator=g)
    model.zero_grad()
    out = model(input_ids=ids, decoder_input_ids=ids[:, :6]) if t5 else model(input_ids=ids)
    out.logits.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def _convert(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a norm left in place would warn
        return normlab.from_torch(model)


def _check(make, t5, dtype, expected_class):
    original = make(dtype)
    converted = _convert(copy.deepcopy(original))
    norms = [m for m in converted.modules() if "Norm" in type(m).__name__]
    assert norms and all(type(m) is expected_class for m in norms), {type(m).__name__ for m in norms}
    logits, grads = _outputs(original, t5)
    logits2, grads2 = _outputs(converted, t5)
    if dtype == torch.float32:
        torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
        for name in grads:
            torch.testing.assert_close(grads2[name], grads[name], rtol=0, atol=0, msg=name)
    else:
        tol = vs_reference(dtype)
        scale = float(logits.float().abs().max())
        torch.testing.assert_close(logits2.float(), logits.float(), rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decoder_families_convert_exactly(family, dtype):
    expected = nl.LayerNorm if FAMILIES[family][3] == "LayerNorm" else nl.RMSNorm
    _check(lambda d: _build(family, d), False, dtype, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_t5_converts_exactly(dtype):
    _check(_t5, True, dtype, nl.RMSNorm)


def test_converted_norms_hold_the_original_parameters_and_state_dict_keys():
    model = _build("gemma")
    keys = list(model.state_dict())
    weight = model.model.norm.weight
    normlab.from_torch(model)
    assert model.model.norm.weight is weight and list(model.state_dict()) == keys
    assert model.model.norm.weight_offset == 1.0 and model.model.norm.casting_mode == "gemma"


def test_an_unknown_norm_class_is_named_in_a_warning():
    class OddNorm(torch.nn.Module):
        def forward(self, x):
            return x / x.norm()

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), OddNorm(), torch.nn.LayerNorm(4))
    with pytest.warns(UserWarning, match=r"left in place, no conversion known: OddNorm \(1\)"):
        normlab.from_torch(model)
    assert type(model[2]) is nl.LayerNorm
    normlab.register_converter(OddNorm, lambda m: torch.nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normlab.from_torch(model)
    assert type(model[1]) is torch.nn.Identity


def test_to_torch_leaves_options_torch_lacks_and_says_so():
    model = torch.nn.Sequential(nl.RMSNorm(4, weight_offset=1.0, casting_mode="gemma"), nl.RMSNorm(4))
    with pytest.warns(UserWarning, match=r"to_torch: left in place, no conversion known: RMSNorm \(1\)"):
        normlab.to_torch(model)
    assert type(model[0]) is nl.RMSNorm and type(model[1]) is torch.nn.RMSNorm
