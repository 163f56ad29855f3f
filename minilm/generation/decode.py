"""Decoding: turning a model's next-token logits into text, one token at a time.

    out = generate(model, idx, max_new_tokens=64, temperature=0)   # or model.generate(...)

A step runs the model on the newest token only: its keys and values join a KVCache
(minilm/model/kv_cache.py), so each new token attends over the stored ones instead of recomputing
the prompt. sample_next (minilm/generation/sampling.py) picks the token: greedy at temperature 0,
else a draw after top-k / top-p filtering. generate_tokens is the streaming form (sample.py prints tokens as they come);
minilm/generation/continuous_batching.py decodes many prompts as one refilling pool.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from minilm.generation.sampling import sample_next
from minilm.model.kv_cache import KVCache


@torch.no_grad()
def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None,
                    seed: Optional[int] = None, use_cache: bool = True,
                    attention_mask: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """Yield each new token column (B,) as it is sampled; the streaming form of generate().

    The caller may send() a bool (B,) mask of the rows to go on with (generate() does when rows
    stop): the others are dropped, cache included, and later columns hold the kept rows only.
    """
    if idx.dim() == 1:
        idx = idx[None]
    B, P = idx.shape
    if P == 0:
        raise ValueError("the prompt is empty; give at least one token (e.g. <|endoftext|>)")
    if P > model.config.block_size:
        raise ValueError(
            f"prompt has {P} tokens but the context holds {model.config.block_size}; "
            "shorten the prompt")
    if attention_mask is not None and not attention_mask[:, -1].bool().all():
        raise ValueError("attention_mask has padding at the end of a prompt; pad prompts on the left, "
                         "so that every row's last token is real")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    dtype = next(model.parameters()).dtype
    # sized to this generation's tokens, not the whole context: SmolLM2's 8192 positions x 30
    # layers would be hundreds of MB per row; past the context the loop below recomputes anyway
    cache_len = min(model.config.block_size, P + max_new_tokens)
    cache = KVCache(model.config, B, idx.device, dtype, cache_len) if use_cache else None
    # the sequence so far, allocated once; read only when the cache is off or full
    tokens = torch.empty(B, P + max_new_tokens, dtype=idx.dtype, device=idx.device)
    tokens[:, :P] = idx
    mask = None  # (B, P + max_new_tokens), True at real tokens, read when the window is recomputed
    if attention_mask is not None:
        mask = torch.ones(B, P + max_new_tokens, dtype=torch.bool, device=idx.device)
        mask[:, :P] = attention_mask.bool()
    # only the last position's logits are needed: the head (V x C) runs on B rows, not B x P
    logits = model.lm_head(model(idx, cache, attention_mask, return_hidden=True)[:, -1])
    for step in range(max_new_tokens):
        next_token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        keep = yield next_token
        if step == max_new_tokens - 1:
            break
        if keep is not None and not keep.all():  # finished rows cost nothing from here on
            rows = keep.nonzero().squeeze(1)
            next_token, tokens = next_token[rows], tokens[rows]
            mask = None if mask is None else mask[rows]
            if cache is not None:
                cache.keep_rows(rows)
        end = P + step + 1
        tokens[:, end - 1] = next_token
        if cache is not None and cache.length < cache.max_len:
            hidden = model(next_token[:, None], cache, return_hidden=True)
        else:  # context full (or no cache): recompute over the last block_size tokens; with left
            cache = None  # padding those columns hold each row's last block_size real tokens, as alone
            window = slice(max(0, end - model.config.block_size), end)
            hidden = model(tokens[:, window], None, None if mask is None else mask[:, window], return_hidden=True)
        logits = model.lm_head(hidden[:, -1])

@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None,
             stop_tokens=None, seed: Optional[int] = None, use_cache: bool = True,
             attention_mask: Optional[torch.Tensor] = None,
             stop_when: Optional[Callable[[int, list[int]], bool]] = None) -> torch.Tensor:
    """Continue idx (B, T) by up to max_new_tokens; returns (B, T + new).

    temperature 0 is greedy decoding. A row that emits one of stop_tokens is finished: it is
    padded with that token while the other rows go on, and generation ends when all are done.
    Past the context length the model sees the last block_size tokens (left-truncation).
    Prompts of different lengths share a batch left-padded, with attention_mask (B, T) 1 at
    their real tokens (see forward): each row then continues as it would alone.
    stop_when(row, new_ids) -> True also finishes a row (e.g. once its text is complete): it is
    asked after each new token that is not a stop token, and the row is then padded with the
    first of stop_tokens, so that a decoder cutting at stop tokens ends it there.
    """
    was_training = model.training
    model.eval()
    idx = idx[None] if idx.dim() == 1 else idx
    stop = torch.tensor(sorted(stop_tokens or []), device=idx.device, dtype=idx.dtype)
    if stop_when is not None and stop.numel() == 0:
        raise ValueError("stop_when needs stop_tokens: a row it finishes is padded with one")
    active = torch.arange(idx.size(0), device=idx.device)  # the rows still generating
    pad = torch.zeros(idx.size(0), dtype=idx.dtype, device=idx.device)  # a finished row's stop token
    out = [idx]
    new_ids: list[list[int]] = [[] for _ in range(idx.size(0))]  # per row, for stop_when
    tokens = generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache,
                                  attention_mask)
    token = next(tokens)  # (rows still active,)
    while True:
        column = pad.clone()
        column[active] = token
        out.append(column[:, None])
        stopped = torch.isin(token, stop)
        pad[active[stopped]] = token[stopped]
        if stop_when is not None:
            for row, (new_token, done) in enumerate(zip(token.tolist(), stopped.tolist())):
                ids = new_ids[int(active[row])]
                ids.append(new_token)
                if not done and stop_when(int(active[row]), ids):
                    stopped[row] = True
                    pad[active[row]] = stop[0]
        active = active[~stopped]
        if active.numel() == 0:
            break
        try:  # the stopped rows leave the batch: the steps after compute the others only
            token = tokens.send(~stopped)
        except StopIteration:  # max_new_tokens reached
            break
    model.train(was_training)
    return torch.cat(out, dim=1)
