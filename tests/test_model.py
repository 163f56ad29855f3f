"""Properties of the decoder: causality, the two attention paths agree, the KV cache changes nothing,
batch independence, rotary positions see offsets only, the closed-form parameter count, the GPT-2
presets build GPT-2's layers, and the GPT-2 format round trip. Every shape-drawn property runs with
both position encodings and both families' choices (norm, MLP, key/value heads, tied head)."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, strategies as st

from minilm.config import PRESETS, ConfigError, ModelConfig
from minilm.config_checks import MLPS, NORMS
from minilm.formats.gpt2 import save_hf_gpt2
from minilm.model.gpt import GPT
from minilm.model.kv_cache import KVCache
from minilm.model.layers import apply_rotary, causal_mask, reference_attention, rotary_cos_sin
import minilm.model.gpt
import minilm.model.layers
from model_helpers import LLAMA, make_model


shapes = st.fixed_dictionaries({
    "n_layer": st.integers(1, 2), "n_head": st.sampled_from([1, 2, 4]),
    "head_dim": st.sampled_from([4, 8]), "bias": st.booleans(), "T": st.integers(1, 16),
    "B": st.integers(1, 3), "seed": st.integers(0, 2**16), "position": st.sampled_from(["learned", "rope"]),
    "kv_group": st.sampled_from([1, 2, 4]), "norm": st.sampled_from(NORMS), "mlp": st.sampled_from(MLPS),
    "mlp_hidden": st.sampled_from([0, 24]), "tie": st.booleans(),
})


def model_for(s, attention):
    torch.manual_seed(s["seed"])
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=s["n_layer"], n_head=s["n_head"],
                         n_embd=s["n_head"] * s["head_dim"], bias=s["bias"], attention=attention,
                         position=s["position"], n_kv_head=max(1, s["n_head"] // s["kv_group"]),
                         norm=s["norm"], mlp=s["mlp"], mlp_hidden=s["mlp_hidden"], tie_embeddings=s["tie"])
    return GPT(config)


@given(shapes, st.data())
def test_causality(s, data):
    model = model_for(s, "sdpa").eval()
    idx = torch.randint(0, 50, (s["B"], s["T"]), generator=torch.Generator().manual_seed(s["seed"]))
    t = data.draw(st.integers(0, s["T"] - 1))
    changed = idx.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 50
    torch.testing.assert_close(model(idx)[:, :t + 1], model(changed)[:, :t + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_llama_family_is_causal_and_sees_the_past(attention):
    """Changing tokens after t leaves the logits up to t alone and changes those after (so the
    check has teeth), with grouped-query heads, RMSNorm, SwiGLU and an untied head."""
    model = make_model(4, attention, **LLAMA)
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    logits = model(idx)
    for t in range(15):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 97
        new = model(changed)
        torch.testing.assert_close(new[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-6)
        assert (new[:, t + 1:] - logits[:, t + 1:]).abs().amax(-1).min() > 1e-4


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
    formula = minilm.model.layers.reference_attention
    monkeypatch.setattr(minilm.model.layers, "reference_attention", lambda *args: calls.append(1) or formula(*args))
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


@given(shapes)
def test_return_hidden_is_the_input_of_the_head(s):
    model = model_for(s, "sdpa").eval()
    idx = torch.randint(0, 50, (s["B"], s["T"]), generator=torch.Generator().manual_seed(s["seed"]))
    hidden = model(idx, return_hidden=True)
    assert hidden.shape == (s["B"], s["T"], model.config.n_embd)
    assert torch.equal(model.lm_head(hidden), model(idx))


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
@given(shapes, st.data())
def test_left_padded_forward_equals_each_row_alone(attention, s, data):
    """With attention_mask, padding is hidden and positions start at each row's first real token,
    so learned positions as well as rotary ones give each row what it gives alone."""
    model = model_for(s, attention).eval()
    B, T = s["B"], s["T"]
    pads = [data.draw(st.integers(0, T - 1)) for _ in range(B)]
    idx = torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(s["seed"]))
    mask = (torch.arange(T)[None, :] >= torch.tensor(pads)[:, None]).long()
    together = model(idx, attention_mask=mask)
    for b, pad in enumerate(pads):
        torch.testing.assert_close(together[b, pad:], model(idx[b:b + 1, pad:])[0], rtol=0, atol=1e-4)




def closed_form_parameters(c: ModelConfig) -> int:
    """Count a config's parameters by hand: the embedding, per block two norms, the fused c_attn
    ([q; k; v]: (n_head + 2 n_kv_head) head_dim rows), c_proj, the MLP, then ln_f and the head."""
    C, hs, H = c.n_embd, c.n_embd // c.n_head, c.mlp_hidden or 4 * c.n_embd
    n_kv = c.n_kv_head or c.n_head
    norm = C + (C if c.norm == "layernorm" and c.bias else 0)
    attn = (c.n_head + 2 * n_kv) * hs * C + c.n_head * hs * C + ((c.n_head + 2 * n_kv) * hs + C if c.bias else 0)
    up_rows = 2 * H if c.mlp == "swiglu" else H  # swiglu's c_fc holds gate and up
    mlp = up_rows * C + H * C + (up_rows + C if c.bias else 0)
    positions = c.block_size * C if c.position == "learned" else 0
    head = 0 if c.tie_embeddings else c.vocab_size * C
    return c.vocab_size * C + positions + c.n_layer * (2 * norm + attn + mlp) + norm + head


@given(st.integers(1, 3), st.sampled_from([(1, 1), (2, 1), (4, 2), (4, 4)]), st.sampled_from([8, 16]),
       st.booleans(), st.integers(5, 100), st.integers(4, 64), st.sampled_from(NORMS), st.sampled_from(MLPS),
       st.sampled_from([0, 20]), st.booleans(), st.sampled_from(["learned", "rope"]))
def test_num_parameters_closed_form(n_layer, heads, head_dim, bias, V, T, norm, mlp, hidden, tie, position):
    n_head, n_kv_head = heads
    config = ModelConfig(vocab_size=V, block_size=T, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim,
                         bias=bias, norm=norm, mlp=mlp, mlp_hidden=hidden, n_kv_head=n_kv_head,
                         tie_embeddings=tie, position=position)
    model = GPT(config)
    expected = closed_form_parameters(config)
    assert model.num_parameters() == expected
    lookups = (T * config.n_embd if position == "learned" else 0) + (0 if tie else V * config.n_embd)
    assert model.num_parameters(non_embedding=True) == expected - lookups


def test_smollm2_shape_has_the_published_parameter_count():
    smollm2 = ModelConfig(vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3, n_embd=576,
                          mlp="swiglu", mlp_hidden=1536, norm="rmsnorm", bias=False, position="rope",
                          rope_base=100000.0)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(smollm2)
    assert model.num_parameters() == closed_form_parameters(smollm2) == 134_515_008  # "SmolLM2-135M"
    with torch.device("meta"):
        untied = GPT(replace(smollm2, tie_embeddings=False))
    assert untied.num_parameters() == 134_515_008 + 49152 * 576


def test_flops_and_mfu():
    model = make_model()
    n = model.num_parameters(non_embedding=True)
    assert model.flops_per_token(seq_len=32) == 6 * n + 12 * 2 * 32 * 32
    for p in model.parameters():  # nothing trains: the forward pass alone
        p.requires_grad_(False)
    assert model.flops_per_token(seq_len=32) == 2 * n + 4 * 2 * 32 * 32
    block_0 = sum(p.numel() for p in model.transformer.h[0].parameters())
    model.transformer.h[1].ln_1.weight.requires_grad_(True)  # only the top block trains: the backward
    # pass runs through the head and block 1 (activations) and stops there; block 0 is forward only
    assert model.flops_per_token(seq_len=32) == (
        2 * n + 2 * (n - block_0) + 2 * model.config.n_embd + 4 * 32 * 32 * (2 + 2 * 1))
    model.transformer.h[1].ln_1.weight.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # the tied embedding: counted once
    assert model.flops_per_token(seq_len=32) == 4 * n + 2 * model.lm_head.weight.numel() + 12 * 2 * 32 * 32
    assert model.estimate_mfu(1000.0, peak_flops=model.flops_per_token() * 2000) == pytest.approx(0.5)


def test_flops_count_an_untied_head_and_not_its_embedding_table():
    model = make_model(**LLAMA)
    C, V = model.config.n_embd, model.config.vocab_size
    n = model.num_parameters(non_embedding=True)
    assert n == model.num_parameters() - V * C  # the token table is read, not multiplied
    attention = 12 * 2 * 32 * 32  # n_layer 2, n_head * head_dim 32, T 32: GQA shares keys, not this work
    assert model.flops_per_token(seq_len=32) == 6 * n + attention
    for p in model.parameters():
        p.requires_grad_(False)
    model.transformer.wte.weight.requires_grad_(True)  # trainable, but no matmul: no FLOPs
    assert model.flops_per_token(seq_len=32) == 4 * n + attention


def test_untied_head_is_its_own_weight():
    tied, untied = make_model(**dict(LLAMA, tie_embeddings=True)), make_model(**LLAMA)
    assert tied.lm_head.weight is tied.transformer.wte.weight and "lm_head.weight" not in dict(tied.named_parameters())
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert "lm_head.weight" in dict(untied.named_parameters())
    idx = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    untied(idx).square().mean().backward()
    head, table = untied.lm_head.weight.grad, untied.transformer.wte.weight.grad
    assert head.abs().sum() > 0 and (table[idx.unique()].abs().sum(-1) > 0).all()
    unused = torch.ones(97, dtype=torch.bool)
    unused[idx.unique()] = False
    assert (table[unused] == 0).all()  # the table gets gradient only at the tokens read; the head everywhere
    with torch.no_grad():
        untied.lm_head.weight.zero_()
    assert (untied(idx) == 0).all()  # the logits come from the head alone


def gpt2_forward(state: dict, config: ModelConfig, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2 written out from its state dict, as the decoder computed it before the Llama family:
    LayerNorm, n_head key/value heads in thirds of c_attn, a 4 n_embd tanh-GELU MLP, tied head."""
    B, T = idx.shape
    C, nh = config.n_embd, config.n_head

    def linear(x, name):
        return F.linear(x, state[name + ".weight"], state.get(name + ".bias"))

    def norm(x, name):
        return F.layer_norm(x, (C,), state[name + ".weight"], state.get(name + ".bias"), 1e-5)

    x = state["transformer.wte.weight"][idx]
    pos = torch.arange(T)
    rotary = rotary_cos_sin(pos, C // nh, config.rope_base) if config.position == "rope" else None
    if rotary is None:
        x = x + state["transformer.wpe.weight"][pos]
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        q, k, v = linear(norm(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        scores = (q @ k.transpose(-2, -1) / (C // nh) ** 0.5).masked_fill(~causal_mask(T, T, "cpu"), float("-inf"))
        y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, h + "attn.c_proj")
        x = x + linear(F.gelu(linear(norm(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh"), h + "mlp.c_proj")
    return norm(x, "transformer.ln_f") @ state["transformer.wte.weight"].T


def gpt2_parameter_shapes(c: ModelConfig) -> dict:
    C, V = c.n_embd, c.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.ln_f.weight": (C,)}
    if c.position == "learned":
        shapes["transformer.wpe.weight"] = (c.block_size, C)
    for i in range(c.n_layer):
        for name, shape in [("ln_1", C), ("attn.c_attn", 3 * C), ("attn.c_proj", C), ("ln_2", C),
                            ("mlp.c_fc", 4 * C), ("mlp.c_proj", C)]:
            fan_in = 4 * C if name == "mlp.c_proj" else C
            shapes[f"transformer.h.{i}.{name}.weight"] = (shape,) if name.startswith("ln") else (shape, fan_in)
            if c.bias:
                shapes[f"transformer.h.{i}.{name}.bias"] = (shape,)
    if c.bias:
        shapes["transformer.ln_f.bias"] = (C,)
    return shapes


@pytest.mark.parametrize("preset", sorted(p for p, run in PRESETS.items() if not run.init))
def test_every_preset_builds_gpt2_layers(preset):
    """The Llama fields default to GPT-2's choices, so each preset we train from scratch builds the
    decoder it always did: the same parameter names and shapes (hence the same init draws),
    LayerNorm, GELU MLP, tied head. (A pretrained base's preset takes the base's architecture.)"""
    config = PRESETS[preset].model
    with torch.device("meta"):
        model = GPT(config)
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == gpt2_parameter_shapes(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    for block in model.transformer.h:
        assert type(block.ln_1) is type(block.ln_2) is nn.LayerNorm and type(block.mlp) is minilm.model.layers.MLP
        assert block.attn.n_kv_head == block.attn.n_head
    assert type(model.transformer.ln_f) is nn.LayerNorm


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_gpt2_forward_is_the_written_out_gpt2(position):
    model = make_model(5, "reference", position=position)
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(idx), gpt2_forward(model.state_dict(), model.config, idx), rtol=0, atol=1e-6)



@pytest.mark.parametrize("change, message", [
    (dict(n_head=4, n_kv_head=3), "n_head (4) must be a multiple of n_kv_head (3)"),
    (dict(n_kv_head=-1), "--n_kv_head must be between 0 and 1024, got -1"),
    (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm, got 'batchnorm'"),
    (dict(mlp="relu"), "mlp must be one of gelu, swiglu, got 'relu'"),
    (dict(mlp_hidden=-1), "--mlp_hidden must be between 0 and 262144, got -1"),
    (dict(norm_eps=0.0), "--norm_eps must be a positive number, got 0.0"),
])
def test_bad_llama_fields_give_one_clear_line(change, message):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**change)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_gpt2_export_refuses_what_gpt2_cannot_express():
    with pytest.raises(ValueError, match="GPT-2's format cannot express norm='rmsnorm', mlp='swiglu'"):
        make_model(**dict(LLAMA, position="learned")).to_hf_gpt2()


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
