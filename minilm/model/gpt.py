"""The decoder: one transformer for GPT-2 and the Llama family, readable top to bottom.

    idx (B, T) -> token embedding (+ position table) -> n_layer x Block -> norm -> logits (B, T, V)
    Block(x) = x + Attention(norm(x)),  then  x + MLP(norm(x))      (pre-norm)

The parts live in minilm/model/layers.py, one formula each, chosen by ModelConfig fields:
  - positions (config.position): "learned", GPT-2's table of block_size vectors added to the token
    embeddings, or "rope", rotary embeddings that rotate queries and keys by an angle proportional
    to their position, so q_i . k_j depends on the offset i - j only (Su et al. 2021);
  - the norm (config.norm): LayerNorm or RMSNorm; the MLP (config.mlp): GELU or SwiGLU;
  - attention with n_kv_head key/value heads (grouped-query attention when fewer than n_head), by
    the written-out formula or torch's fused kernel (config.attention);
  - the LM head: tied to the token embedding (GPT-2, SmolLM2) or its own weight (tie_embeddings).

Module names follow the GPT-2 checkpoint (wte, wpe, h.{i}.attn.c_attn, ln_f, ...), so importing
Hugging Face GPT-2 weights is a transpose, not a translation table (see minilm/formats/gpt2.py), and
LoRA targets mean the same layers in every family. The loss is not computed here: forward returns
logits, or the final hidden states for a loss that runs the head only where it counts, and
minilm/loss.py turns them into the objective.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from minilm.config import ModelConfig
from minilm.formats import gpt2
from minilm.generation import decode
from minilm.model.kv_cache import Cache, SharedPrefix
from minilm.model.layers import CausalSelfAttention, make_mlp, make_norm, rotary_cos_sin
from minilm.model.linear import Linear


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(self, x, cache: Optional[Cache] = None, layer: int = 0, rotary=None, key_mask=None):
        x = x + self.attn(self.ln_1(x), cache, layer, rotary, key_mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, init_weights: bool = True):
        super().__init__()
        self.config = config
        # a skeleton's embedding skips its own random init: on the meta device normal_ imports
        # torch._dynamo, 1.5 s of a cold start (nn.Linear's uniform_ does not)
        table = None if init_weights else torch.empty(config.vocab_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd, _weight=table),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config),
        ))
        if config.position == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # one matrix reads tokens in and writes them out, as GPT-2 and SmolLM2
            self.lm_head.weight = self.transformer.wte.weight
        if init_weights:
            self._initialise()

    def _initialise(self):
        # GPT-2's initialisation for every family (a pretrained Llama loads without it: skeleton)
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 n_layer),
        # so the stream's variance does not grow with depth (two such writes per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    @classmethod
    def skeleton(cls, config: ModelConfig) -> "GPT":
        """The model's modules with shapes and no memory (parameters on the meta device), for
        weights read from a file: building GPT(config) for real spends seconds drawing random
        numbers (2.2 s for SmolLM2 on 2 cores) that loading then overwrites."""
        with torch.device("meta"):
            return cls(config, init_weights=False)

    def assign_tensors(self, tensors: dict[str, torch.Tensor]) -> "GPT":
        """Make these tensors the parameters themselves (no copy), one for every parameter of a
        `skeleton`; a tied LM head may be left out (it is the token embedding). Returns the model."""
        if self.config.tie_embeddings and "lm_head.weight" not in tensors:
            tensors = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}
        # one Parameter per tensor keeps a tied LM head tied (both names hold the same tensor)
        parameters = {id(t): nn.Parameter(t) for t in tensors.values()}
        self.load_state_dict({name: parameters[id(t)] for name, t in tensors.items()}, assign=True)
        left = [name for name, t in self.state_dict(keep_vars=True).items() if t.is_meta]
        if left:
            raise ValueError(f"assign_tensors left {left[:3]} on the meta device; give every parameter")
        return self

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: Optional[Cache] = None,
                attention_mask: Optional[torch.Tensor] = None, return_hidden: bool = False,
                shared_prefix: int = 0) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size). With a cache, idx continues its prefix.

        attention_mask (B, T), 1 at real tokens and 0 at padding (Hugging Face's convention), lets
        prompts of different lengths share a batch, left-padded: padding is hidden from attention
        (a cache remembers it for the steps after), and each row's positions count its real tokens
        only, so a row computes what it would alone. (Rotary scores depend on offsets only, so a
        shift would change nothing in exact arithmetic; counting from the first real token also
        gives the same rounding as alone, and is what learned positions need.)

        return_hidden=True stops before the head: the final hidden states (B, T, n_embd), for
        whoever needs logits at a few positions only (minilm.loss.head_sequence_nll, the last
        position in generation).

        shared_prefix=n > 0 says that every row starts with the same n tokens (kv_cache.
        shared_prefix_length): they are computed once, for one row, and the rest of each row after
        them (SharedPrefix): the same function, for fewer FLOPs when a batch of chat examples
        shares its system turn (fine-tuning).
        """
        if shared_prefix > 0 and cache is None and attention_mask is None:
            return self._forward_after_prefix(idx, shared_prefix, return_hidden)
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the context of {self.config.block_size}; "
                "shorten the input or use a model with a larger block_size")
        key_mask = None  # (B, start + T), True at real tokens, when the batch is padded
        if attention_mask is not None or (cache is not None and cache.attention_mask is not None):
            mask = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            if mask.shape != idx.shape:
                raise ValueError(f"attention_mask shape {tuple(mask.shape)} must equal idx shape {tuple(idx.shape)}")
            key_mask = cache.extend_mask(mask) if cache is not None else mask
            pos = (key_mask.cumsum(dim=1) - 1).clamp(min=0)[:, start:]  # (B, T): real tokens before, per row
        else:
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rotary = rotary_cos_sin(pos, self.config.head_dim, self.config.rope_base)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, rotary, key_mask)
        if cache is not None:
            cache.length += T
        hidden = self.transformer.ln_f(x)  # (B, T, C)
        return hidden if return_hidden else self.lm_head(hidden)  # (B, T, V)

    def _forward_after_prefix(self, idx: torch.Tensor, n: int, return_hidden: bool) -> torch.Tensor:
        """forward(idx) for rows whose first n tokens agree: those n once, then the rest after them."""
        prefix = SharedPrefix()
        head = self(idx[:1, :n], prefix, return_hidden=return_hidden)  # (1, n, ·): advances prefix.length
        rest = self(idx[:, n:], prefix, return_hidden=return_hidden)  # (B, T - n, ·), positions from n
        return torch.cat([head.expand(idx.size(0), -1, -1), rest], dim=1)

    # ---------------------------------------------------------------- size and speed
    def lookup_tables(self) -> list[nn.Parameter]:
        """The embedding tables that are indexed, never multiplied: the position table, and the token
        table when the LM head has its own weight (a tied one is the head's matmul, so it counts)."""
        tables = [self.transformer.wpe.weight] if "wpe" in self.transformer else []
        if not self.config.tie_embeddings:
            tables.append(self.transformer.wte.weight)
        return tables

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (a tied LM head shares the token embedding).

        non_embedding=True leaves out the lookup tables, the convention of the 6N FLOPs estimate.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(t.numel() for t in self.lookup_tables())
        return n

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token: 6N for the matmuls plus attention, when every weight trains.

        Each weight costs 2 FLOPs per token forward, 2 backward to the activations and 2 backward to
        itself. A frozen weight (under LoRA, almost all of them) skips the last; the blocks below the
        lowest one with a trainable weight skip the backward pass altogether (nothing below them
        needs a gradient), so LoRA on the top half of the blocks costs 2N + 2N_above + 2N_trainable.
        Attention adds 4 * n_head * head_dim * T per block forward (QK^T and the weighted sum of V,
        each 2*T*hs multiply-adds per query head and token) and twice that backward (PaLM appendix
        B). Grouped-query attention shares keys, not this work. T is the sequence length trained on.
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        tables = {id(t) for t in self.lookup_tables()}
        n_trainable = sum(p.numel() for p in self.parameters() if p.requires_grad and id(p) not in tables)
        blocks = self.transformer.h
        embeddings_train = any(p.requires_grad for p in (self.transformer.wte.weight, *self.lookup_tables()))
        lowest = 0 if embeddings_train else next(
            (i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())), cfg.n_layer)
        anything_trains = any(p.requires_grad for p in self.parameters())
        n_below = sum(p.numel() for block in blocks[:lowest] for p in block.parameters())
        n = self.num_parameters(non_embedding=True)
        backward_to_activations = (n - n_below) if anything_trains else 0
        backward_blocks = (cfg.n_layer - lowest) if anything_trains else 0
        attention = 4 * cfg.n_head * cfg.head_dim * T * (cfg.n_layer + 2 * backward_blocks)
        return 2 * n + 2 * backward_to_activations + 2 * n_trainable + attention

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: Optional[int] = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of the peak given."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # ---------------------------------------------------------------- generation
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
        """Continue idx (B, T) by up to max_new_tokens; returns (B, T + new). The decoding loop,
        sampling and its options live in minilm/generation/decode.py (generate)."""
        return decode.generate(self, idx, max_new_tokens, **options)

    # ---------------------------------------------------------------- Hugging Face GPT-2 format
    @classmethod
    def from_hf_gpt2(cls, path_or_state_dict, **config_overrides) -> "GPT":
        """Build a GPT from a Hugging Face GPT-2 state dict (a dict, or a local .safetensors/.bin file)."""
        return gpt2.load_hf_gpt2(cls, path_or_state_dict, **config_overrides)

    def to_hf_gpt2(self) -> dict:
        """Our weights as a Hugging Face GPT2LMHeadModel state dict (Conv1D weights transposed)."""
        return gpt2.to_hf_state_dict(self)
