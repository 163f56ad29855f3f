"""Properties of the decoder's parts: grouped-query attention's two paths agree (values and
gradients) and equal attention over repeated key/value heads; with n_kv_head == n_head the module
is the pre-GQA attention bit for bit; RMSNorm and SwiGLU equal their written formulas; the KV cache
holds the key/value heads only; each config choice builds its module."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, strategies as st

from minilm.config import ModelConfig
from minilm.model.kv_cache import KVCache
from minilm.model.layers import (MLP, CausalSelfAttention, RMSNorm, SwiGLU, apply_rotary, causal_mask,
                           make_mlp, make_norm, reference_attention, rotary_cos_sin)

heads = st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (6, 2), (6, 3)])  # (nh, n_kv)


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@given(heads, st.integers(1, 3), st.integers(1, 12), st.integers(0, 6), st.sampled_from([2, 8]),
       st.integers(0, 2**16))
def test_grouped_reference_attention_equals_sdpa_and_repeated_heads_with_gradients(nh_kv, B, Tq, past, hs, seed):
    """Query head h reads k/v head h // group: the same as repeating every k/v head `group` times
    (Hugging Face's repeat_kv) and as torch's enable_gqa, including queries after a cached prefix."""
    nh, n_kv = nh_kv
    Tk = past + Tq
    q = randn(B, nh, Tq, hs, seed=seed).requires_grad_()
    k = randn(B, n_kv, Tk, hs, seed=seed + 1).requires_grad_()
    v = randn(B, n_kv, Tk, hs, seed=seed + 2).requires_grad_()
    mask = causal_mask(Tq, Tk, "cpu")
    grouped = reference_attention(q, k, v, mask)
    repeated = reference_attention(q, k.repeat_interleave(nh // n_kv, 1), v.repeat_interleave(nh // n_kv, 1), mask)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert grouped.shape == (B, nh, Tq, hs)
    torch.testing.assert_close(grouped, repeated, rtol=0, atol=1e-6)
    torch.testing.assert_close(grouped, fused, rtol=0, atol=1e-5)
    weight = randn(*grouped.shape, seed=seed + 3)  # a generic loss: sum(weight * output)
    grads = [torch.autograd.grad((out * weight).sum(), (q, k, v)) for out in (grouped, fused)]
    for g_ref, g_fast, name in zip(*grads, "qkv"):
        torch.testing.assert_close(g_ref, g_fast, rtol=1e-4, atol=1e-5, msg=name)


def attention_module(seed, attention, n_head=4, n_kv_head=0, position="rope", bias=True):
    torch.manual_seed(seed)
    config = ModelConfig(n_embd=32, n_head=n_head, n_kv_head=n_kv_head, block_size=16, bias=bias,
                         attention=attention, position=position)
    return CausalSelfAttention(config), config


@given(st.sampled_from([(4, 1), (4, 2), (2, 1)]), st.integers(1, 8), st.integers(0, 8), st.booleans(),
       st.integers(0, 2**16))
def test_gqa_module_reference_path_equals_sdpa_with_a_cache_and_gradients(nh_kv, T, past, bias, seed):
    ref, config = attention_module(seed, "reference", *nh_kv, bias=bias)
    fast, _ = attention_module(seed, "sdpa", *nh_kv, bias=bias)
    x = randn(2, past + T, 32, seed=seed)
    rotary = rotary_cos_sin(torch.arange(past + T), config.head_dim, 10000.0)
    outs = []
    for module in (ref, fast):
        cache = KVCache(config, 2, "cpu", torch.float32)
        if past:
            module(x[:, :past], cache, 0, tuple(r[:past] for r in rotary))
            cache.length = past
        outs.append(module(x[:, past:], cache, 0, tuple(r[past:] for r in rotary)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    outs[0].square().sum().backward()
    outs[1].square().sum().backward()
    for (name, p_ref), (_, p_fast) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_ref.grad, p_fast.grad, rtol=1e-4, atol=1e-5, msg=name)


@given(st.sampled_from([(4, 1), (4, 2), (2, 2)]), st.integers(1, 8), st.integers(0, 8), st.integers(0, 2**16),
       st.data())
def test_left_padding_is_hidden_in_both_paths_with_a_cache_and_gradients(nh_kv, T, past, seed, data):
    """A key mask hides each row's leading padding: reference == SDPA (values, gradients), with and
    without a cached prefix, and a row's real queries give what the row gives without its padding."""
    length = past + T
    pads = [data.draw(st.integers(0, length - 1)) for _ in range(3)]
    key_mask = torch.arange(length)[None, :] >= torch.tensor(pads)[:, None]  # (3, length)
    x = randn(3, length, 32, seed=seed)
    ref, config = attention_module(seed, "reference", *nh_kv)
    fast, _ = attention_module(seed, "sdpa", *nh_kv)
    positions = (key_mask.cumsum(1) - 1).clamp(min=0)  # (3, length): each row's real tokens from 0
    rotary = rotary_cos_sin(positions, config.head_dim, 10000.0)  # each (3, 1, length, hs / 2)
    outs = []
    for module in (ref, fast):
        cache = KVCache(config, 3, "cpu", torch.float32)
        if past:
            module(x[:, :past], cache, 0, tuple(r[:, :, :past] for r in rotary), key_mask[:, :past])
            cache.length = past
        outs.append(module(x[:, past:], cache, 0, tuple(r[:, :, past:] for r in rotary), key_mask))
    assert torch.isfinite(outs[0]).all()  # padding queries too: each still sees its own key
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    outs[0].square().sum().backward()
    outs[1].square().sum().backward()
    for (name, p_ref), (_, p_fast) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_ref.grad, p_fast.grad, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        for row, pad in enumerate(pads):
            alone_rotary = rotary_cos_sin(torch.arange(length - pad), config.head_dim, 10000.0)
            alone = ref(x[row:row + 1, pad:], rotary=alone_rotary)[0]  # (length - pad, C)
            real_queries = slice(max(pad, past) - past, T)
            torch.testing.assert_close(outs[0][row, real_queries], alone[max(pad, past) - pad:],
                                       rtol=0, atol=1e-5)


def pre_gqa_attention(module, x, rotary, path):
    """The attention before grouped-query heads existed, written as it was: c_attn split into three
    n_embd-wide thirds, n_head heads each, and the 4-D formula or torch's kernel."""
    B, T, C = x.shape
    q, k, v = module.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, module.n_head, C // module.n_head).transpose(1, 2) for t in (q, k, v))
    q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    if path == "reference":
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        y = torch.softmax(scores.masked_fill(~causal_mask(T, T, x.device), float("-inf")), dim=-1) @ v
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return module.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


@pytest.mark.parametrize("path", ["reference", "sdpa"])
@given(st.sampled_from([1, 2, 4]), st.integers(1, 12), st.integers(0, 2**16))
def test_full_kv_heads_are_the_pre_gqa_attention_bit_for_bit(path, n_head, T, seed):
    for n_kv_head in (0, n_head):  # the default and the explicit count mean the same
        module, config = attention_module(seed, path, n_head=n_head, n_kv_head=n_kv_head)
        assert module.c_attn.weight.shape == (3 * 32, 32)  # GPT-2's fused [q; k; v]
        x = randn(2, T, 32, seed=seed)
        rotary = rotary_cos_sin(torch.arange(T), config.head_dim, 10000.0)
        assert torch.equal(module(x, rotary=rotary), pre_gqa_attention(module, x, rotary, path))


def test_gqa_weight_layout_and_cache_hold_the_kv_heads_only():
    module, config = attention_module(0, "sdpa", n_head=4, n_kv_head=2)
    hs = config.head_dim
    assert module.c_attn.weight.shape == ((4 + 2 * 2) * hs, 32)  # rows [q (4 hs); k (2 hs); v (2 hs)]
    assert module.c_proj.weight.shape == (32, 4 * hs)
    cache = KVCache(config, 3, "cpu", torch.float32, max_len=5)
    assert cache.k.shape == cache.v.shape == (config.n_layer, 3, 2, 5, hs)
    module(randn(3, 5, 32, seed=0), cache)
    with pytest.raises(ValueError, match="the KV cache holds 5 positions, 6 needed"):
        cache.length = 5
        module(randn(3, 1, 32, seed=1), cache)


@given(st.integers(1, 64), st.floats(1e-6, 1e-2), st.floats(0.01, 100.0), st.integers(0, 2**16))
def test_rmsnorm_equals_its_formula_and_ignores_the_scale_of_x(dim, eps, scale, seed):
    norm = RMSNorm(dim, eps)
    with torch.no_grad():
        norm.weight.copy_(randn(dim, seed=seed + 1))
    x = randn(3, 5, dim, seed=seed)
    x64, w64 = x.double(), norm.weight.double()
    formula = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64  # y = x / rms(x) * weight
    torch.testing.assert_close(norm(x).double(), formula, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (dim,), norm.weight, eps), rtol=1e-5, atol=1e-6)
    # no mean is subtracted, and scaling x leaves the output alone (up to eps)
    big = x64 * scale
    scaled = big / torch.sqrt(big.pow(2).mean(-1, keepdim=True)) * w64
    torch.testing.assert_close(scaled, x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True)) * w64)


def test_rmsnorm_computes_in_fp32_and_returns_the_input_dtype():
    norm = RMSNorm(16)
    x = randn(4, 16, seed=0).bfloat16() * 100
    y = norm.bfloat16()(x)
    assert y.dtype == torch.bfloat16
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()  # cast, then weight
    assert torch.equal(y, norm.weight * expected)


@given(st.integers(1, 32), st.integers(1, 48), st.booleans(), st.integers(0, 2**16))
def test_swiglu_equals_down_of_silu_gate_times_up(C, H, bias, seed):
    torch.manual_seed(seed)
    config = ModelConfig(n_embd=C, n_head=1, mlp="swiglu", mlp_hidden=H, bias=bias)
    mlp = SwiGLU(config)
    assert mlp.c_fc.weight.shape == (2 * H, C) and mlp.c_proj.weight.shape == (C, H)
    x = randn(2, 3, C, seed=seed)
    w_gate, w_up = mlp.c_fc.weight[:H], mlp.c_fc.weight[H:]  # rows [gate (H); up (H)]
    gate, up = x @ w_gate.T, x @ w_up.T
    if bias:
        gate, up = gate + mlp.c_fc.bias[:H], up + mlp.c_fc.bias[H:]
    down = (gate * torch.sigmoid(gate) * up) @ mlp.c_proj.weight.T  # silu(z) = z * sigmoid(z)
    if bias:
        down = down + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), down, rtol=1e-5, atol=1e-6)


def test_each_config_choice_builds_its_module():
    gpt2 = ModelConfig(n_embd=32, n_head=4)
    assert type(make_norm(gpt2)) is nn.LayerNorm and make_norm(gpt2).bias is not None
    assert type(make_mlp(gpt2)) is MLP and make_mlp(gpt2).c_fc.weight.shape == (4 * 32, 32)
    llama = replace(gpt2, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", mlp_hidden=40, bias=False)
    assert type(make_norm(llama)) is RMSNorm and make_norm(llama).eps == 1e-6
    assert type(make_mlp(llama)) is SwiGLU and make_mlp(llama).c_proj.weight.shape == (32, 40)
    assert make_mlp(llama).c_fc.bias is None
    assert make_norm(replace(gpt2, norm_eps=1e-3)).eps == 1e-3
