"""Continuous batching: many prompts decoded as one pool of rows that refills as rows finish.

    new_ids = generate_pooled(model, prompts, max_new_tokens=160, stop_ids=[2], pool_size=32)

Decoding one token costs nearly as much for 1 row as for 16 (a step reads every weight once), so
a batch is only as cheap per token as it is full. Fixed batches empty as their rows stop, and the
longest answer of each batch is decoded nearly alone. Here the pool keeps one KV cache of
pool_size rows; when an eighth of its rows have finished, the next prompts are prefilled as a
left-padded batch and written into those rows, right-aligned with the others (PoolCache.place;
positions count each row's real tokens, GPT.forward), so the pool stays full until the queue runs
dry, and then shrinks by halves. Nothing is copied per step: a row that finishes idles until it
is refilled (dropping rows would copy the cache, and a fresh tensor of that size costs more in page
faults than a decode step), and when the columns run out the padding all rows share is dropped
(PoolCache.realign). Measurements: docs/experiments.md, "Continuous batching".

Each row computes what it would alone: greedy results equal one prompt at a time (tests/
test_continuous_batching.py), and a sampled row draws from its own generator, seeded by the seed
and the row, so what it samples does not depend on which rows share its steps.
Prompts enter in order of length, so that a prefill batch holds little padding, and the tokens
they all start with (a chat format's system turn, 24 of SmolLM2's 73 per task) are computed once
and copied into each prefill (kv_cache.shared_prefix_length, KVCache.start_with).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from minilm import seeds
from minilm.generation.sampling import sample_next
from minilm.model.kv_cache import KVCache, shared_prefix_length


class PoolCache(KVCache):
    """One KV cache for a pool of rows whose prompts start at different steps: each row's
    positions are right-aligned at `length`, and the columns before its first real one are
    padding. Positions count a row's real tokens only (GPT.forward), so moving a row's columns
    or starting it late changes nothing it computes."""

    def first_token_column(self) -> torch.Tensor:
        """(B,) the column of each row's first real position (0 when nothing was padded)."""
        if self.attention_mask is None:
            return torch.zeros(self.k.size(1), dtype=torch.long, device=self.k.device)
        seen = self.attention_mask[:, :self.length]
        return torch.where(seen.any(1), seen.int().argmax(1), self.length)

    def realign(self, start: int, end: int) -> None:
        """Move the stored columns [start, length) to end at column `end`: left, to drop padding
        every row has; right, to make room for a longer prompt. The columns before are padding."""
        n = self.length - start
        if end > self.max_len or n > end:
            raise ValueError(f"cannot move {n} columns to end at {end} in a cache of {self.max_len}")
        mask = self.full_mask()
        if end - n != start:
            for layer in range(self.k.size(0)):  # a layer at a time: the copies the overlap needs stay small
                self.k[layer, :, :, end - n:end] = self.k[layer, :, :, start:self.length].clone()
                self.v[layer, :, :, end - n:end] = self.v[layer, :, :, start:self.length].clone()
            mask[:, end - n:end] = mask[:, start:self.length].clone()
            mask[:, :end - n] = False
        self.length = end

    def place(self, rows: torch.Tensor, other: KVCache) -> None:
        """Write the rows of `other` (a prefill, no longer than this cache so far) into these rows,
        right-aligned at `length`; what the rows held before is gone."""
        width, end = other.length, self.length
        if width > end:
            raise ValueError(f"a prefill of {width} columns does not fit before column {end}; realign first")
        self.k[:, rows, :, end - width:end] = other.k[:, :, :, :width]
        self.v[:, rows, :, end - width:end] = other.v[:, :, :, :width]
        mask = self.full_mask()
        mask[rows] = False
        mask[rows, end - width:end] = True if other.attention_mask is None else other.attention_mask[:, :width]


def fits_pool(prompt_length: int, max_new_tokens: int, block_size: int) -> bool:
    """A prompt joins a pool when it and its whole answer fit the context (no sliding window)."""
    return prompt_length + max_new_tokens <= block_size


@torch.no_grad()
def generate_pooled(model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    stop_ids: Sequence[int], *, pool_size: int = 32, n_samples: int = 1,
                    temperature: float = 0.0, top_k: Optional[int] = None,
                    top_p: Optional[float] = None, seed: int = 0,
                    stop_when: Optional[Callable[[int, list[int]], bool]] = None,
                    on_prompt_done: Optional[Callable[[int], None]] = None,
                    share_prefix: bool = True) -> list[list[list[int]]]:
    """n_samples lists of new ids per prompt: each ends at its first stop id (kept), or after
    max_new_tokens; a row stop_when(prompt index, new ids) finishes ends with stop_ids[0] added.

    Every prompt must be non-empty and fit the context with its answer (fits_pool); a rotary model
    is needed (left padding shifts no position of it). on_prompt_done(i) is called when prompt i's
    samples are all finished. share_prefix: the tokens all prompts start with are computed once.
    """
    if model.config.position != "rope":
        raise ValueError("continuous batching left-pads rows: it needs rotary positions (position='rope')")
    if not stop_ids:
        raise ValueError("continuous batching needs stop_ids: a row ends at one (or at max_new_tokens)")
    block_size = model.config.block_size
    for i, prompt in enumerate(prompts):
        if not prompt or not fits_pool(len(prompt), max_new_tokens, block_size):
            raise ValueError(f"prompt {i} ({len(prompt)} tokens) with {max_new_tokens} new tokens "
                             f"does not fit the context of {block_size}")
    if not prompts:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stops = set(stop_ids)
    # the rows waiting, shortest prompt first: (prompt index, sample index), popped from the end
    queue = [(i, s) for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
             for s in reversed(range(n_samples))]
    results: list[list[list[int]]] = [[[] for _ in range(n_samples)] for _ in prompts]
    left = [n_samples] * len(prompts)  # samples of each prompt still running
    generators = {}
    pool_size = min(pool_size, len(queue))
    # one cache for the pool, sized for the longest prompt and its answer, plus slack so that a
    # realignment (when the columns run out) frees many steps' worth at once
    longest = max(len(p) for p in prompts) + max_new_tokens
    cache = PoolCache(model.config, pool_size, device, next(model.parameters()).dtype,
                      min(block_size, longest + max(32, longest // 4)))
    slots: list[Optional[tuple[int, int]]] = [None] * pool_size  # the row each cache row holds
    # the system turn every chat prompt starts with is computed once, not once per prompt
    shared = shared_prefix_length(prompts) if share_prefix else 0
    prefix = None
    if shared:
        prefix = KVCache(model.config, 1, device, cache.k.dtype, shared)
        model(torch.tensor([prompts[0][:shared]], device=device), prefix, return_hidden=True)
    logits = None  # (pool rows, V): each row's next-token logits
    while True:
        free = [r for r, row in enumerate(slots) if row is None]
        if queue and len(free) >= max(1, pool_size // 8):  # refill the free rows
            new_rows = [queue.pop() for _ in range(min(len(free), len(queue)))]
            new_logits, prefill = _prefill(model, [prompts[i] for i, _ in new_rows], device, prefix)
            if prefill.length > cache.length:  # a longer prompt than the columns so far: move right
                cache.realign(_first_live_column(cache, slots), prefill.length)
            index = torch.tensor(free[:len(new_rows)], device=device)
            cache.place(index, prefill)
            if logits is None:
                logits = new_logits.new_zeros(pool_size, new_logits.size(1))
            logits[index] = new_logits
            for r, row in zip(free, new_rows):
                slots[r] = row
                if temperature > 0:
                    generators[row] = torch.Generator(device=device).manual_seed(seeds.sampling_seed(seed, *row))
        tokens = _next_tokens(logits, slots, temperature, top_k, top_p, generators)
        for r, token in enumerate(tokens.tolist()):
            if slots[r] is None:
                continue
            i, s = slots[r]
            ids = results[i][s]
            ids.append(token)
            finished = token in stops or len(ids) == max_new_tokens
            if not finished and stop_when is not None and stop_when(i, ids):
                ids.append(stop_ids[0])
                finished = True
            if finished:
                slots[r] = None
                generators.pop((i, s), None)
                left[i] -= 1
                if left[i] == 0 and on_prompt_done is not None:
                    on_prompt_done(i)
        live = [r for r, row in enumerate(slots) if row is not None]
        if not live and not queue:
            break
        if not queue and len(live) <= len(slots) // 2:  # the tail: a smaller batch is a cheaper step
            index = torch.tensor(live, device=device)
            cache.keep_rows(index)
            slots, tokens, logits = [slots[r] for r in live], tokens[index], logits[index]
        if cache.length == cache.max_len:  # out of columns: drop the padding every live row has
            start = _first_live_column(cache, slots)
            cache.realign(start, cache.length - start)
        if live:
            logits = model.lm_head(model(tokens[:, None], cache, return_hidden=True)[:, -1])
    model.train(was_training)
    return results


def _first_live_column(cache: "PoolCache", slots) -> int:
    """The first column any live row reads (the cache's length when no row is live)."""
    live = torch.tensor([row is not None for row in slots], device=cache.k.device)
    return int(cache.first_token_column()[live].min()) if live.any() else cache.length


def left_padded(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one batch padded on the left with id 0: ids (B, width) and attention_mask
    (B, width), True at the prompts' own tokens, so that every row's last column is its last token."""
    width = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for r, prompt in enumerate(prompts):
        idx[r, width - len(prompt):] = torch.tensor(list(prompt))
        attention_mask[r, width - len(prompt):] = True
    return idx, attention_mask


def _prefill(model, prompts: list[Sequence[int]], device,
             prefix: Optional[KVCache] = None) -> tuple[torch.Tensor, KVCache]:
    """The prompts' KV cache and their last positions' logits (B, V). With `prefix` (the cache of
    the tokens they all start with) only the rest of each prompt is computed: the prefix's keys
    and values start every row, and the rests follow them left-padded (padding inside a
    row is hidden and skipped by positions as at its start, GPT.forward)."""
    shared = 0 if prefix is None else prefix.length
    idx, attention_mask = left_padded([p[shared:] for p in prompts])
    cache = KVCache(model.config, len(prompts), device, next(model.parameters()).dtype, shared + idx.size(1))
    if prefix is not None:
        cache.start_with(prefix)
    mask = None if attention_mask.all() else attention_mask.to(device)
    hidden = model(idx.to(device), cache, mask, return_hidden=True)
    return model.lm_head(hidden[:, -1]), cache


def _next_tokens(logits: torch.Tensor, slots, temperature, top_k, top_p, generators) -> torch.Tensor:
    """Greedy for all rows at once; sampled row by row, each from its own generator (a free
    row's token is never read)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.cat([logits.new_zeros(1, dtype=torch.long) if row is None else
                      sample_next(logits[r:r + 1], temperature, top_k, top_p, generators[row])
                      for r, row in enumerate(slots)])
