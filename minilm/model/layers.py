"""The decoder's parts, each one formula: positions, attention, norms and MLPs.

minilm/model/gpt.py stacks them into a GPT. Each architectural choice of ModelConfig is one small
module or function here, so GPT-2 and the Llama family share one decoder:

    choice                 GPT-2 (the defaults)                 Llama (SmolLM2)
    config.norm            LayerNorm (with bias when bias=True)  RMSNorm
    config.mlp             c_proj(gelu(c_fc x))                  down(silu(gate x) * up x)
    config.n_kv_head       n_head (every head its own k, v)     fewer: grouped-query attention
    config.position        a learned table of positions          rotary ("rope")

Attention has two paths that compute the same function (tests/test_layers.py proves it):
  - "reference": the formula written out, softmax(Q K^T / sqrt(d_head) + causal_mask) V;
  - "sdpa":      torch's F.scaled_dot_product_attention (flash attention on CUDA);
  - "auto" (the default) takes the one that is faster where it runs: the reference under bf16 on a
    CPU, where two bf16 matmuls keep up with or beat torch's CPU flash kernel, and sdpa everywhere
    else (flash attention on CUDA); bench/bench_attention.py measures it, docs/experiments.md has
    the figures.

Every weight matrix is a minilm.model.linear.Linear: an nn.Linear whose fp32 matmul on a CPU runs on
oneDNN, the same function by a faster kernel (see that module).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.config import ModelConfig
from minilm.model.kv_cache import Cache
from minilm.model.linear import Linear


# ---------------------------------------------------------------- positions and the causal mask
def causal_mask(q_len: int, k_len: int, device, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where query i may attend to key j.

    Queries are the last q_len of k_len positions (a KV cache holds the first ones), so query i
    sits at absolute position k_len - q_len + i and may see every key at or before it.

    key_mask (B, k_len), True at real tokens, hides padding too: the result is (B, 1, q_len, k_len),
    one mask per row, broadcast over heads. A query always sees its own key, so a padding query
    (whose output nothing reads) still has one key and a finite softmax; a real query sees itself
    anyway, so its keys are exactly the real ones at or before it.
    """
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = k_pos <= q_pos  # (q_len, k_len)
    if key_mask is None:
        return mask
    return mask & (key_mask[:, None, None, :] | (k_pos == q_pos))  # (B, 1, q_len, k_len)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float):
    """cos and sin of the rotary angles, each (..., T, head_dim / 2) for positions (..., T):
    angle[p, i] = p * base^(-2i / head_dim). Positions (B, T), one row each, give (B, 1, T, hs / 2),
    which broadcast over the heads of (B, nh, T, hs)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (..., T, hs / 2)
    if positions.dim() == 2:
        angles = angles.unsqueeze(1)  # (B, 1, T, hs / 2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[i], x[i + hs/2]) of x (B, nh, T, hs) by the angles of their positions.

    A rotation by angle a at position p and by b at position q leaves the dot product depending on
    a - b alone, which is why rotary attention scores see relative positions. The pairing is the
    half-split one of Hugging Face Llama's `rotate_half`.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# ---------------------------------------------------------------- attention
def reference_attention(q, k, v, mask):
    """softmax(Q K^T / sqrt(d_head) + mask) V, written out, with grouped-query attention.

    q: (B, nh, Tq, hs); k, v: (B, n_kv, Tk, hs) with nh a multiple of n_kv. Query head h reads
    key/value head h // (nh / n_kv), the convention of Hugging Face's `repeat_kv` and of torch's
    `enable_gqa`; with n_kv == nh every head has its own (the group dimension is 1). mask is
    (Tq, Tk), or (B, 1, Tq, Tk) for a padded batch (causal_mask with a key_mask).
    """
    B, nh, Tq, hs = q.shape
    n_kv = k.size(1)
    if mask.dim() == 4:
        mask = mask.unsqueeze(2)  # (B, 1, 1, Tq, Tk): broadcast over key/value heads and groups
    q = q.view(B, n_kv, nh // n_kv, Tq, hs)  # query heads grouped by the key/value head they read
    k, v = k.unsqueeze(2), v.unsqueeze(2)  # (B, n_kv, 1, Tk, hs): broadcast over the group
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, n_kv, group, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))  # adding -inf is the "+ causal_mask" term
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v).view(B, nh, Tq, hs)  # (B, n_kv, group, Tq, hs) -> (B, nh, Tq, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with n_kv_head key/value heads (grouped-query attention).

    c_attn makes q, k and v in one matmul: its rows are [q (n_head*hs) ; k (n_kv*hs) ; v (n_kv*hs)],
    so with n_kv_head == n_head it is GPT-2's fused [q; k; v] exactly.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.resolved_n_kv_head, config.head_dim
        self.path = config.attention
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.c_attn = Linear(config.n_embd, q_width + 2 * kv_width, bias=config.bias)
        self.c_proj = Linear(q_width, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache: Optional[Cache] = None, layer: int = 0, rotary=None,
                key_mask: Optional[torch.Tensor] = None):
        """x (B, T, C) -> (B, T, C). key_mask (B, past + T), True at real tokens, hides left padding."""
        B, T, C = x.shape
        nh, n_kv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, n_kv * hs, n_kv * hs], dim=2)
        # (B, T, heads * hs) -> (B, heads, T, hs): each head attends independently over its own slice.
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        if rotary is not None:  # (cos, sin) of these T positions; cached keys were rotated before
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, n_kv, past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        path = self.path
        if path == "auto":
            path = "reference" if q.device.type == "cpu" and q.dtype == torch.bfloat16 else "sdpa"
        if path == "reference":
            y = reference_attention(q, k, v, causal_mask(T, k.size(2), x.device, key_mask))
            y = F.dropout(y, dropout_p, self.training) if dropout_p else y
        else:
            # torch repeats each k/v head for its group itself; asked only when there are groups,
            # so n_kv == nh keeps the kernels (and the bits) of plain multi-head attention
            gqa = n_kv != nh
            if k.size(2) == T and key_mask is None:  # the plain causal case, which flash attention handles
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
            elif T == 1 and gqa:  # one new token per row (decoding) sees every key not hidden as padding:
                # its group's query heads become query rows of their shared key/value head, so no
                # key is repeated per head (faster than enable_gqa on a CPU at SmolLM2's 9/3 heads)
                mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, past + 1)
                y = F.scaled_dot_product_attention(q.reshape(B, n_kv, nh // n_kv, hs), k, v, attn_mask=mask,
                                                   dropout_p=dropout_p).view(B, nh, 1, hs)
            else:  # queries at the end of a cached prefix, or padding: the explicit mask
                mask = causal_mask(T, k.size(2), x.device, key_mask)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------- normalisation
class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019), Llama's norm:

        y = x / sqrt(mean(x^2) + eps) * weight

    No mean is subtracted and there is no bias. Computed in fp32 and cast back before the weight,
    exactly as Hugging Face's LlamaRMSNorm, so bf16 activations give the same bits as there.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    """The norm config.norm names: LayerNorm (GPT-2: (x - mean) / std * weight + bias) or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


# ---------------------------------------------------------------- MLPs
class MLP(nn.Module):
    """GPT-2's MLP: c_proj(gelu(c_fc x)), hidden width H (4 * n_embd unless mlp_hidden says)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.resolved_mlp_hidden, bias=config.bias)
        self.c_proj = Linear(config.resolved_mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU; keeping it makes imported weights exact.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class SwiGLU(nn.Module):
    """Llama's MLP (Shazeer 2020): down(silu(gate x) * up x), with silu(z) = z * sigmoid(z).

    gate and up are fused into one c_fc whose rows are [gate (H) ; up (H)], so one matmul makes
    both; c_proj is down (n_embd, H). The names stay GPT-2's so LoRA targets work unchanged.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 2 * config.resolved_mlp_hidden, bias=config.bias)
        self.c_proj = Linear(config.resolved_mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # each (B, T, H)
        return self.dropout(self.c_proj(F.silu(gate) * up))


def make_mlp(config: ModelConfig) -> nn.Module:
    """The MLP config.mlp names: "gelu" (GPT-2) or "swiglu" (Llama)."""
    return SwiGLU(config) if config.mlp == "swiglu" else MLP(config)
