"""What attention remembers between calls: the KV cache, and the prefix a batch of rows shares.

Both hold keys and values (B, n_kv_head, T, head_dim) per layer, and GPT.forward advances their
`length` after every layer has run:

  - KVCache: preallocated, written in place. Generating one token attends over the stored keys
    instead of recomputing the prompt: O(T) work per new token instead of O(T^2).
  - SharedPrefix: the tokens every row of a batch starts with (a chat format's system turn),
    computed for one row; the other rows' keys are the prefix's concatenated in front of their
    own, out of place, so gradients flow back into the prefix (training).

shared_prefix_length says how long that common start is; training (GPT.forward's shared_prefix),
the trainer's token count and continuous batching's prefill all use it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from minilm.config import ModelConfig


def shared_prefix_length(rows: Union[torch.Tensor, Sequence[Sequence[int]]], min_saving: float = 0.0) -> int:
    """How many leading tokens all rows have in common, leaving each row at least one of its own
    (whose logits start its answer or carry its loss).

    rows: a (B, T) tensor or lists of token ids of any lengths. 0 for a single row (nothing is
    shared), or when
    computing the common start once would save less than min_saving of the rows' positions (a
    second pass is not free: our own format's one-token <|task|> start is not worth it)."""
    if len(rows) < 2:
        return 0
    shortest = min(len(row) for row in rows)
    idx = rows[:, :shortest] if isinstance(rows, torch.Tensor) else torch.tensor([list(r[:shortest]) for r in rows])
    same = (idx == idx[:1]).all(dim=0)  # (shortest,) columns where every row has row 0's token
    n = min(int(same.int().cumprod(dim=0).sum()), shortest - 1)
    positions = sum(len(row) for row in rows)
    return n if (len(rows) - 1) * n >= min_saving * positions else 0


class KVCache:
    """Keys and values of every layer for the positions processed so far.

    It holds the n_kv_head key/value heads only (grouped-query attention shares them; a third of
    the memory for SmolLM2) and `max_len` positions (default block_size): a generation sizes it to
    the tokens it will produce.

    For a left-padded batch it also keeps the attention mask of the stored positions
    (`attention_mask`, (B, max_len), True at real tokens, made at the first forward given one), so
    later steps keep hiding the padding without being told again.
    """

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype, max_len: Optional[int] = None):
        self.max_len = max_len or config.block_size
        shape = (config.n_layer, batch_size, config.resolved_n_kv_head, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions stored; advanced by GPT.forward after all layers ran
        self.attention_mask: Optional[torch.Tensor] = None  # (B, max_len) bool once padding was seen

    def extend_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Record the mask (B, T) of the next T positions; return the keys' mask (B, length + T)."""
        start, end = self.length, self.length + attention_mask.size(1)
        self.full_mask()[:, start:end] = attention_mask
        return self.attention_mask[:, :end]

    def full_mask(self) -> torch.Tensor:
        """`attention_mask`, made on first need: positions stored before any padding are all real."""
        if self.attention_mask is None:
            self.attention_mask = torch.ones(self.k.size(1), self.max_len, dtype=torch.bool, device=self.k.device)
        return self.attention_mask

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (indices), e.g. when the others have finished generating."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[rows]

    def start_with(self, prefix: "KVCache") -> None:
        """Begin every row with the positions of `prefix` (a one-row cache of the tokens all rows
        share, computed once)."""
        n = prefix.length
        self.k[:, :, :, :n] = prefix.k[:, :, :, :n]  # (n_layer, 1, ...) broadcast to every row
        self.v[:, :, :, :n] = prefix.v[:, :, :, :n]
        self.length = n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's k, v (B, n_kv, T, hs) and return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions, {end} needed; "
                             "create it with a larger max_len")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class SharedPrefix:
    """Keys and values of the tokens every row of a batch starts with, computed for one row and
    broadcast to the others (GPT.forward with shared_prefix=n).

    Chat examples all open with the same system turn (24 of SmolLM2's ~95 tokens per fine-tuning
    example); computing it once per batch instead of once per row is the same function with about
    a fifth fewer FLOPs. Nothing is written in place, so gradients flow back into the prefix.
    """
    attention_mask = None  # no padding inside a prefix: the rows after it see all of it

    def __init__(self):
        self.k: list[torch.Tensor] = []  # per layer, (1, n_kv, prefix length, hs)
        self.v: list[torch.Tensor] = []
        self.length = 0  # the prefix's length once its forward pass ran (GPT.forward advances it)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """The prefix's own pass stores its k, v; a later pass gets them in front of its own."""
        if self.length == 0:
            self.k.append(k)
            self.v.append(v)
            return k, v
        B = k.size(0)
        return (torch.cat([self.k[layer].expand(B, -1, -1, -1), k], dim=2),
                torch.cat([self.v[layer].expand(B, -1, -1, -1), v], dim=2))


Cache = Union[KVCache, SharedPrefix]  # what attention reads earlier keys and values from
