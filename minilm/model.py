"""The decoder: a GPT-2 style transformer, readable top to bottom.

    idx (B, T) -> token embedding + position embedding -> n_layer x Block -> LayerNorm -> logits (B, T, V)
    Block(x) = x + Attention(LayerNorm(x)),  then  x + MLP(LayerNorm(x))      (pre-LayerNorm)

Positions enter one of two ways (ModelConfig.position):
  - "learned": GPT-2's table of block_size vectors added to the token embeddings;
  - "rope":    rotary embeddings, which rotate queries and keys by an angle proportional to their
               position, so q_i . k_j depends on the offset i - j only (Su et al. 2021).

Attention has two paths that compute the same function (tests/test_model.py proves it):
  - "reference": the formula written out, softmax(Q K^T / sqrt(d_head) + causal_mask) V;
  - "sdpa":      torch's F.scaled_dot_product_attention (flash attention on CUDA);
  - "auto" (the default) takes the one that is faster where it runs: the reference under bf16 on a
    CPU, where two bf16 matmuls keep up with or beat torch's CPU flash kernel (0.99-1.15x for the
    small model, bench/bench_attention.py --dtype bfloat16), and sdpa everywhere else (1.03-1.09x
    in fp32 on a CPU; flash attention on CUDA).

Module names follow the GPT-2 checkpoint (wte, wpe, h.{i}.attn.c_attn, ln_f, ...), so importing
Hugging Face GPT-2 weights is a transpose, not a translation table (see minilm/gpt2_interop.py).
The loss is not computed here: forward returns logits and minilm/loss.py turns them into the objective.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilm.config import ModelConfig


class KVCache:
    """Keys and values of every layer for the positions processed so far.

    With a cache, generating one token attends over the stored keys instead of recomputing the
    whole prefix: O(T) work per new token instead of O(T^2).
    """

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions stored; advanced by GPT.forward after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's k, v (B, nh, T, hs) and return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where query i may attend to key j.

    Queries are the last q_len of k_len positions (a KV cache holds the first ones), so query i
    sits at absolute position k_len - q_len + i and may see every key at or before it.
    """
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    k_pos = torch.arange(k_len, device=device)[None, :]
    return k_pos <= q_pos


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float):
    """cos and sin of the rotary angles, each (T, head_dim / 2): angle[p, i] = p * base^(-2i / head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[i], x[i + hs/2]) of x (B, nh, T, hs) by the angles of their positions.

    A rotation by angle a at position p and by b at position q leaves the dot product depending on
    a - b alone, which is why rotary attention scores see relative positions.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def reference_attention(q, k, v, mask):
    """softmax(Q K^T / sqrt(d_head) + mask) V, written out. q: (B, nh, Tq, hs), k, v: (B, nh, Tk, hs)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))  # adding -inf is the "+ causal_mask" term
    weights = torch.softmax(scores, dim=-1)
    return weights @ v  # (B, nh, Tq, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.path = config.attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache: Optional[KVCache] = None, layer: int = 0, rotary=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): each head attends independently over its own slice.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:  # (cos, sin) of these T positions; cached keys were rotated before
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        path = self.path
        if path == "auto":
            path = "reference" if q.device.type == "cpu" and q.dtype == torch.bfloat16 else "sdpa"
        if path == "reference":
            y = reference_attention(q, k, v, causal_mask(T, k.size(2), x.device))
            y = F.dropout(y, dropout_p, self.training) if dropout_p else y
        elif k.size(2) == T:  # no cached prefix: the plain causal case, which flash attention handles
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # queries at the end of a cached prefix need the offset mask
            mask = causal_mask(T, k.size(2), x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU; keeping it makes imported weights exact.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache: Optional[KVCache] = None, layer: int = 0, rotary=None):
        x = x + self.attn(self.ln_1(x), cache, layer, rotary)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        if config.position == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 n_layer),
        # so the stream's variance does not grow with depth (two such writes per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size). With a cache, idx continues its prefix."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the context of {self.config.block_size}; "
                "shorten the input or use a model with a larger block_size")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rotary = rotary_cos_sin(pos, self.config.n_embd // self.config.n_head, self.config.rope_base)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rotary)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)

    # ---------------------------------------------------------------- size and speed
    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied LM head shares the token embedding).

        non_embedding=True leaves out the position table, the convention of the 6N FLOPs estimate.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token: 6N for the matmuls plus attention, when every weight trains.

        Each weight costs 2 FLOPs per token forward, 2 backward to the activations and 2 backward to
        itself; a frozen weight (under LoRA, almost all of them) skips the last, so the matmuls cost
        4N + 2N_trainable. Attention adds 12 * n_layer * n_embd * T: QK^T and the weighted sum of V,
        each 2*T*C multiply-adds per token forward, times 3 for forward + backward (PaLM appendix B).
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        n_trainable = sum(p.numel() for name, p in self.named_parameters()
                          if p.requires_grad and "wpe" not in name)
        return 4 * self.num_parameters(non_embedding=True) + 2 * n_trainable + 12 * cfg.n_layer * cfg.n_embd * T

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: Optional[int] = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of the peak given."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_tokens(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: Optional[int] = None, top_p: Optional[float] = None,
                        seed: Optional[int] = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
        """Yield each new token column (B,) as it is sampled; the streaming form of generate()."""
        if idx.dim() == 1:
            idx = idx[None]
        if idx.size(1) == 0:
            raise ValueError("the prompt is empty; give at least one token (e.g. <|endoftext|>)")
        if idx.size(1) > self.config.block_size:
            raise ValueError(
                f"prompt has {idx.size(1)} tokens but the context holds {self.config.block_size}; "
                "shorten the prompt")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        dtype = next(self.parameters()).dtype
        cache = KVCache(self.config, idx.size(0), idx.device, dtype) if use_cache else None
        logits = self(idx, cache)[:, -1, :]
        for step in range(max_new_tokens):
            next_token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            yield next_token
            idx = torch.cat([idx, next_token[:, None]], dim=1)
            if step == max_new_tokens - 1:
                break
            if cache is not None and cache.length < self.config.block_size:
                logits = self(next_token[:, None], cache)[:, -1, :]
            else:  # context full (or no cache): recompute over the last block_size tokens
                cache = None
                logits = self(idx[:, -self.config.block_size:])[:, -1, :]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 stop_tokens=None, seed: Optional[int] = None, use_cache: bool = True) -> torch.Tensor:
        """Continue idx (B, T) by up to max_new_tokens; returns (B, T + new).

        temperature 0 is greedy decoding. A row that emits one of stop_tokens is finished: it is
        padded with that token while the other rows go on, and generation ends when all are done.
        Past the context length the model sees the last block_size tokens (left-truncation).
        """
        was_training = self.training
        self.eval()
        idx = idx[None] if idx.dim() == 1 else idx
        stop = torch.tensor(sorted(stop_tokens or []), device=idx.device, dtype=idx.dtype)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        pad = torch.zeros_like(finished, dtype=idx.dtype)
        out = [idx]
        for token in self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache):
            token = torch.where(finished, pad, token)
            out.append(token[:, None])
            just_stopped = torch.isin(token, stop) & ~finished
            pad = torch.where(just_stopped, token, pad)
            finished |= just_stopped
            if finished.all():
                break
        self.train(was_training)
        return torch.cat(out, dim=1)

    # ---------------------------------------------------------------- Hugging Face GPT-2 format
    @classmethod
    def from_hf_gpt2(cls, path_or_state_dict, **config_overrides) -> "GPT":
        """Build a GPT from a Hugging Face GPT-2 state dict (a dict, or a local .safetensors/.bin file)."""
        from minilm.gpt2_interop import load_hf_gpt2
        return load_hf_gpt2(cls, path_or_state_dict, **config_overrides)

    def to_hf_gpt2(self) -> dict:
        """Our weights as a Hugging Face GPT2LMHeadModel state dict (Conv1D weights transposed)."""
        from minilm.gpt2_interop import to_hf_state_dict
        return to_hf_state_dict(self)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token (B,) from logits (B, V): greedy at temperature 0, else sample.

    top_k keeps the k most likely tokens; top_p keeps the smallest set whose probability reaches p
    (nucleus sampling). Both filters set the dropped logits to -inf before the softmax.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
