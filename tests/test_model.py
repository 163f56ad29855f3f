"""Properties of the decoder: causality, the two attention paths agree, the KV cache changes nothing,
batch independence, rotary positions see offsets only, the closed-form parameter count, and the
GPT-2 format round trip. Every shape-drawn property runs with both position encodings."""
from dataclasses import replace

import pytest
import torch
from hypothesis import given, strategies as st

import minilm.model
from minilm.config import ConfigError, ModelConfig
from minilm.gpt2_interop import save_hf_gpt2
from minilm.model import GPT, KVCache, apply_rotary, causal_mask, reference_attention, rotary_cos_sin, sample_next


def make_model(seed=0, attention="sdpa", **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, attention=attention)
    return GPT(replace(config, **overrides)).eval()


shapes = st.fixed_dictionaries({
    "n_layer": st.integers(1, 2), "n_head": st.sampled_from([1, 2, 4]),
    "head_dim": st.sampled_from([4, 8]), "bias": st.booleans(), "T": st.integers(1, 16),
    "B": st.integers(1, 3), "seed": st.integers(0, 2**16), "position": st.sampled_from(["learned", "rope"]),
})


def model_for(s, attention):
    torch.manual_seed(s["seed"])
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=s["n_layer"], n_head=s["n_head"],
                         n_embd=s["n_head"] * s["head_dim"], bias=s["bias"], attention=attention,
                         position=s["position"])
    return GPT(config)


@given(shapes, st.data())
def test_causality(s, data):
    model = model_for(s, "sdpa").eval()
    idx = torch.randint(0, 50, (s["B"], s["T"]), generator=torch.Generator().manual_seed(s["seed"]))
    t = data.draw(st.integers(0, s["T"] - 1))
    changed = idx.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 50
    torch.testing.assert_close(model(idx)[:, :t + 1], model(changed)[:, :t + 1], rtol=0, atol=1e-6)


@given(shapes)
def test_reference_attention_equals_sdpa_with_gradients(s):
    ref, fast = model_for(s, "reference"), model_for(s, "sdpa")
    idx = torch.randint(0, 50, (s["B"], s["T"]), generator=torch.Generator().manual_seed(s["seed"]))
    logits_ref, logits_fast = ref(idx), fast(idx)
    torch.testing.assert_close(logits_ref, logits_fast, rtol=0, atol=1e-5)
    (logits_ref.square().mean()).backward()
    (logits_fast.square().mean()).backward()
    for (name, p_ref), (_, p_fast) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_ref.grad, p_fast.grad, rtol=1e-4, atol=1e-6, msg=name)


@given(shapes, st.data())
def test_kv_cache_prefill_then_continue_matches_full_forward(s, data):
    """Feeding the sequence in two chunks through the cache gives the full forward's logits, on both paths."""
    split = data.draw(st.integers(1, s["T"]))
    idx = torch.randint(0, 50, (s["B"], s["T"]), generator=torch.Generator().manual_seed(s["seed"]))
    for attention in ("reference", "sdpa"):
        model = model_for(s, attention).eval()
        cache = KVCache(model.config, s["B"], idx.device, torch.float32)
        chunks = [model(idx[:, :split], cache)]
        if split < s["T"]:
            chunks.append(model(idx[:, split:], cache))
        torch.testing.assert_close(torch.cat(chunks, dim=1), model(idx), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, expected", [(torch.float32, "sdpa"), (torch.bfloat16, "reference")])
def test_auto_attention_takes_the_reference_path_only_for_bf16_on_a_cpu(monkeypatch, dtype, expected):
    calls = []
    formula = minilm.model.reference_attention
    monkeypatch.setattr(minilm.model, "reference_attention", lambda *args: calls.append(1) or formula(*args))
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits_auto = make_model(attention="auto")(idx)
        assert bool(calls) == (expected == "reference")
        assert torch.equal(logits_auto, make_model(attention=expected)(idx))


def test_reference_attention_formula_on_a_hand_example():
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = reference_attention(q, k, v, causal_mask(2, 2, "cpu"))
    # position 0 sees only key 0; position 1 weighs keys by softmax([0, 2] / sqrt(2))
    w = torch.softmax(torch.tensor([0.0, 2.0]) / 2 ** 0.5, dim=0)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])
    torch.testing.assert_close(out[0, 0, 1], w[0] * v[0, 0, 0] + w[1] * v[0, 0, 1])


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("attention", ["reference", "sdpa"])
@given(seed=st.integers(0, 1000), prompt_len=st.integers(1, 10), new=st.integers(1, 40))
def test_greedy_generation_with_cache_equals_recompute(attention, position, seed, prompt_len, new):
    """Including past the context (32): both then fall back to the last block_size tokens."""
    model = make_model(seed, attention, position=position)
    idx = torch.randint(0, 97, (2, prompt_len), generator=torch.Generator().manual_seed(seed))
    with_cache = model.generate(idx, new, temperature=0, use_cache=True)
    without = model.generate(idx, new, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache.shape == (2, prompt_len + new)


def test_sampling_is_reproducible_from_seed_and_stops_on_stop_tokens():
    model = make_model(1)
    idx = torch.zeros(3, 2, dtype=torch.long)
    a = model.generate(idx, 20, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    b = model.generate(idx, 20, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    assert torch.equal(a, b)
    stop = int(a[0, 2])  # the first sampled token of row 0 becomes a stop token
    out = model.generate(idx, 20, temperature=1.0, top_k=10, top_p=0.9, seed=7, stop_tokens=[stop])
    assert out[0, 2] == stop and (out[0, 2:] == stop).all()  # finished rows are padded with it


@given(st.integers(1, 20), st.floats(0.05, 0.95), st.integers(0, 100))
def test_top_k_and_top_p_only_sample_allowed_tokens(k, p, seed):
    logits = torch.randn(4, 20, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    picks = torch.stack([sample_next(logits, 1.0, top_k=k, generator=g) for _ in range(30)], dim=1)
    allowed = torch.topk(logits, k, dim=-1).indices
    assert all(set(picks[i].tolist()) <= set(allowed[i].tolist()) for i in range(4))
    picks = torch.stack([sample_next(logits, 1.0, top_p=p, generator=g) for _ in range(30)], dim=1)
    probs = torch.softmax(logits, -1)
    for i in range(4):
        sorted_probs, order = probs[i].sort(descending=True)
        keep = int(((sorted_probs.cumsum(0) - sorted_probs) < p).sum())  # smallest set reaching p
        assert set(picks[i].tolist()) <= set(order[:keep].tolist())


def test_prompt_longer_than_context_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="prompt has 33 tokens but the context holds 32"):
        model.generate(torch.zeros(1, 33, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 1)


@given(st.sampled_from([2, 4, 8, 16]), st.integers(0, 200), st.integers(0, 200), st.integers(-50, 50),
       st.integers(0, 2**16))
def test_rotary_scores_depend_on_the_offset_only(head_dim, i, j, shift, seed):
    """q_i . k_j after rotation is a function of i - j: shifting both positions leaves it unchanged,
    and a rotation keeps each vector's length."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, 1, head_dim, generator=g, dtype=torch.float64)

    def rotate(x, position):
        cos, sin = rotary_cos_sin(torch.tensor([position]), head_dim, 10000.0)
        return apply_rotary(x, cos.double(), sin.double())

    tol = 1e-5 * float(q.norm() * k.norm())  # the angles are float32: p * theta is exact to ~1e-7 p
    score = (rotate(q, i) * rotate(k, j)).sum()
    shifted = (rotate(q, i + abs(shift)) * rotate(k, j + abs(shift))).sum()
    torch.testing.assert_close(score, shifted, rtol=0, atol=tol)
    torch.testing.assert_close(rotate(q, i).norm(), q.norm(), rtol=1e-6, atol=0)
    if i == j:  # no offset, no rotation between them: the plain dot product
        torch.testing.assert_close(score, (q * k).sum(), rtol=0, atol=tol)


def test_rope_model_has_no_position_table_and_cannot_be_exported_as_gpt2():
    model = make_model(position="rope")
    assert "transformer.wpe.weight" not in model.state_dict()
    assert model.num_parameters(non_embedding=True) == model.num_parameters()
    with pytest.raises(ValueError, match="learned position table"):
        model.to_hf_gpt2()
    with pytest.raises(ConfigError, match="head size must be even"):
        ModelConfig(n_embd=12, n_head=4, position="rope")
    with pytest.raises(ConfigError, match="position must be"):
        ModelConfig(position="alibi")


@given(st.integers(0, 1000), st.integers(2, 4))
def test_batch_independence(seed, B):
    model = make_model(seed)
    idx = torch.randint(0, 97, (B, 12), generator=torch.Generator().manual_seed(seed))
    together = model(idx)
    for b in range(B):
        torch.testing.assert_close(model(idx[b:b + 1])[0], together[b], rtol=0, atol=1e-5)


@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.sampled_from([8, 16]), st.booleans(),
       st.integers(5, 100), st.integers(4, 64))
def test_num_parameters_closed_form(n_layer, n_head, head_dim, bias, V, T):
    C = n_head * head_dim
    model = GPT(ModelConfig(vocab_size=V, block_size=T, n_layer=n_layer, n_head=n_head, n_embd=C, bias=bias))
    linear_weights = 3 * C * C + C * C + 4 * C * C + 4 * C * C  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    linear_biases = (3 * C + C + 4 * C + C) if bias else 0
    layer_norms = 2 * (2 * C if bias else C)
    per_block = linear_weights + linear_biases + layer_norms
    expected = V * C + T * C + n_layer * per_block + (2 * C if bias else C)  # + ln_f; lm_head tied
    assert model.num_parameters() == expected
    assert model.num_parameters(non_embedding=True) == expected - T * C


def test_flops_and_mfu():
    model = make_model()
    n = model.num_parameters(non_embedding=True)
    assert model.flops_per_token(seq_len=32) == 6 * n + 12 * 2 * 32 * 32
    for p in model.parameters():  # frozen weights need no gradient of their own: 4N instead of 6N
        p.requires_grad_(False)
    assert model.flops_per_token(seq_len=32) == 4 * n + 12 * 2 * 32 * 32
    model.lm_head.weight.requires_grad_(True)  # the tied embedding: counted once
    assert model.flops_per_token(seq_len=32) == 4 * n + 2 * model.lm_head.weight.numel() + 12 * 2 * 32 * 32
    assert model.estimate_mfu(1000.0, peak_flops=model.flops_per_token() * 2000) == pytest.approx(0.5)


def test_init_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=2000, block_size=64, n_layer=8, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_hf_export_import_round_trip(tmp_path):
    model = make_model(3)
    state = model.to_hf_gpt2()
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    back = GPT.from_hf_gpt2(state, n_head=2)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    idx = torch.randint(0, 97, (2, 16))
    assert torch.equal(model(idx), back.eval()(idx))
    # through files, in both formats transformers writes; config.json supplies n_head
    save_hf_gpt2(model, tmp_path / "st")
    assert torch.equal(GPT.from_hf_gpt2(tmp_path / "st").eval()(idx), model(idx))
    # GPT2Model's layout: no "transformer." prefix and no LM head
    torch.save({k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"},
               tmp_path / "st" / "pytorch_model.bin")
    (tmp_path / "st" / "model.safetensors").unlink()
    assert torch.equal(GPT.from_hf_gpt2(tmp_path / "st").eval()(idx), model(idx))


def test_hf_import_rejects_what_is_not_gpt2(tmp_path):
    with pytest.raises(ValueError, match="not a GPT-2 state dict"):
        GPT.from_hf_gpt2({"foo": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="no such file"):
        GPT.from_hf_gpt2(tmp_path / "missing.safetensors")
