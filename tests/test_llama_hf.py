"""Hugging Face Llama as the referee: a small random LlamaForCausalLM copied into our decoder gives
the same logits (both attention paths, tied and untied heads) and the same greedy tokens; our
export reloads in transformers with identical logits; the name mapping round-trips exactly; a
sharded directory loads; what the format cannot hold is refused in one line."""
import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

from minilm.config import ModelConfig
from minilm.formats.llama_hf import (hf_config_from_llama, llama_config_from_hf, load_hf_llama, save_hf_llama,
                                     state_dict_from_hf_llama, state_dict_to_hf_llama)
from minilm.model.gpt import GPT

transformers = pytest.importorskip("transformers", reason="transformers is the referee (a dev dependency)")

TINY_LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=64)


def random_hf_llama(tie: bool):
    """A LlamaForCausalLM whose weights are large enough for every part to matter: with the default
    std 0.02 the attention is nearly uniform, so a wrong rotary base or head grouping would hide."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA, tie_word_embeddings=tie)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if p.dim() == 1 else torch.randn_like(p) / p.size(-1) ** 0.5)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request):
    """(transformers' model, ours with its weights) for a tied and an untied head."""
    hf = random_hf_llama(request.param)
    config = llama_config_from_hf(hf.config.to_dict())
    ours = GPT(config).eval()
    ours.load_state_dict(state_dict_from_hf_llama(hf.state_dict(), config))
    return hf, ours


IDX = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_logits_equal_transformers(pair, attention):
    hf, ours = pair
    assert ours.config.tie_embeddings == hf.config.tie_word_embeddings
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == ours.config.tie_embeddings
    ours = GPT(replace(ours.config, attention=attention)).eval()
    ours.load_state_dict(pair[1].state_dict())
    with torch.no_grad():
        expected, got = hf(IDX).logits, ours(IDX)
    assert expected.abs().max() > 1  # logits far from uniform: the comparison has teeth
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_greedy_generation_equals_transformers(pair):
    hf, ours = pair
    prompt = IDX[:, :6]
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20,
                           do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 20, temperature=0), expected)


def test_save_then_transformers_reload_gives_identical_logits(pair, tmp_path):
    hf, ours = pair
    save_hf_llama(ours, tmp_path)
    assert ("lm_head.weight" in _saved_names(tmp_path)) != ours.config.tie_embeddings
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(IDX).logits, hf(IDX).logits)  # the same weights, bit for bit
        assert torch.equal(load_hf_llama(tmp_path)(IDX), ours(IDX))  # and our own loader reads them back


def _saved_names(directory):
    from safetensors import safe_open
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_a_sharded_directory_loads(tmp_path):
    hf = random_hf_llama(False)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        torch.testing.assert_close(load_hf_llama(tmp_path)(IDX), hf(IDX).logits, rtol=0, atol=1e-5)


@given(st.sampled_from([(4, 1), (4, 2), (4, 4), (6, 3)]), st.booleans(), st.booleans(), st.integers(0, 100))
def test_state_dict_round_trips_exactly(heads, bias, tie, seed):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=heads[0], n_kv_head=heads[1], n_embd=24,
                         bias=bias, tie_embeddings=tie, norm="rmsnorm", mlp="swiglu", mlp_hidden=20,
                         position="rope")
    ours = GPT(config).state_dict()
    hf = state_dict_to_hf_llama(ours, config)
    hs = 24 // heads[0]
    assert hf["model.layers.0.self_attn.k_proj.weight"].shape == (heads[1] * hs, 24)
    assert hf["model.layers.1.mlp.gate_proj.weight"].shape == (20, 24)
    assert ("model.layers.0.self_attn.q_proj.bias" in hf) == bias
    back = state_dict_from_hf_llama(hf, config)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    assert llama_config_from_hf(hf_config_from_llama(config)) == config


def test_what_the_format_cannot_hold_is_refused(tmp_path):
    llama = dict(TINY_LLAMA, model_type="llama", intermediate_size=96)
    for change, message in [
        (dict(model_type="mistral"), "model_type 'mistral'; only 'llama'"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope scaling .* is not supported"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(attention_bias=True), "attention_bias and mlp_bias differ"),
        (dict(head_dim=32), "head_dim 32 is not hidden_size / num_attention_heads"),
    ]:
        with pytest.raises(ValueError, match=message):
            llama_config_from_hf(dict(llama, **change))
    with pytest.raises(ValueError, match="needs norm='rmsnorm'.*has norm='layernorm', mlp='gelu'"):
        save_hf_llama(GPT(ModelConfig(vocab_size=50, n_layer=1, n_embd=16, n_head=2, position="rope")), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
    untied = llama_config_from_hf(dict(llama, tie_word_embeddings=False))
    hf_state = state_dict_to_hf_llama(GPT(untied).state_dict(), untied)
    del hf_state["lm_head.weight"]
    with pytest.raises(ValueError, match="lm_head.weight is missing .tie_word_embeddings is false"):
        state_dict_from_hf_llama(hf_state, untied)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_llama(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(llama))
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load_hf_llama(tmp_path)
