"""Picking the next token from logits: greedy, or a draw after temperature, top-k and top-p.

    tokens = sample_next(logits, temperature=0.8, top_p=0.95, generator=g)   # (B,) from (B, V)

Which tokens may be drawn, for one row of logits l over the vocabulary:
    l / temperature                          temperature < 1 sharpens, > 1 flattens
    top_k: keep the k largest                (every token tied with the k-th stays)
    top_p: keep the smallest set of the most likely tokens (in the top-k renormalised
           distribution) whose probability reaches p: a token is kept while the tokens
           before it in descending order, ties by id, sum to less than p (Holtzman et al. 2019)
The draw is by inverse CDF: one uniform u per row from its generator, and the kept tokens' probabilities
summed in increasing id order; the token is the first whose running sum exceeds u times the total.

Two paths give the same token for the same u, bit for bit (tests/test_sampling.py):
  - kept_reference sorts the whole vocabulary (the definition above, written out);
  - kept_fast looks at the few largest logits only (torch.topk), which hold the whole nucleus
    at the temperatures code is sampled at, and falls back to the reference when they do not.
    Sorting 49,152 logits per row and step cost three times the model's forward pass in
    HumanEval's pass@1 from samples (docs/experiments.md#sampling).
"""
from __future__ import annotations

from typing import Optional

import torch

CANDIDATES = 64  # logits kept_fast looks at first; it falls back to a full sort past them


def row_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(l / temperature) of one row (V,), in fp32."""
    scaled = logits.float() / temperature
    return scaled - torch.logsumexp(scaled, dim=-1)


def kept_reference(log_probs: torch.Tensor, top_k: Optional[int], top_p: Optional[float]) -> torch.Tensor:
    """The ids (ascending) of the tokens that may be drawn, from a full sort of the row."""
    order = torch.sort(log_probs, descending=True, stable=True).indices  # most likely first, ties by id
    kept = order
    if top_k is not None and top_k < len(order):
        kept = order[log_probs[order] >= log_probs[order[top_k - 1]]]  # ties with the k-th stay
    if top_p is not None and top_p < 1.0:
        # renormalised within top-k; without top-k the row's own probabilities (already normalised:
        # a softmax would round them differently from kept_fast's, which sees a few of them only)
        probs = torch.softmax(log_probs[kept], dim=-1) if top_k is not None and top_k < len(order) else log_probs[kept].exp()
        before = probs.cumsum(dim=-1) - probs  # probability of the tokens ahead of each
        kept = kept[before < top_p]
    return kept.sort().values


def kept_fast(log_probs: torch.Tensor, top_k: Optional[int], top_p: Optional[float]) -> torch.Tensor:
    """kept_reference's ids, from the CANDIDATES (or top_k + 1) largest logits when they decide it."""
    if top_p is None or top_p >= 1.0:
        if top_k is None or top_k >= len(log_probs):
            return torch.arange(len(log_probs), device=log_probs.device)
    n = min(len(log_probs), max(CANDIDATES, (top_k or 0) + 1))
    if n == len(log_probs):  # the candidates would be the whole row
        return kept_reference(log_probs, top_k, top_p)
    values, ids = torch.topk(log_probs, n)
    # the candidates are the n largest; a token outside them is smaller than (or tied with) the last
    order = torch.argsort(ids)  # candidates by id, then a stable sort by value: ties by id, as the reference
    ids, values = ids[order], values[order]
    order = torch.sort(values, descending=True, stable=True).indices
    ids, values = ids[order], values[order]
    boundary = values[-1]  # a token outside may tie with this one
    kept_ids, kept_values = ids, values
    if top_k is not None and top_k < len(log_probs):
        kept = values >= values[top_k - 1]
        if values[top_k - 1] == boundary:  # the tie with the k-th may run past the candidates
            return kept_reference(log_probs, top_k, top_p)
        kept_ids, kept_values = ids[kept], values[kept]
    if top_p is not None and top_p < 1.0:
        whole_row = top_k is None or top_k >= len(log_probs)
        # the row's own probabilities, or renormalised within top-k: the reference's numbers exactly
        probs = kept_values.exp() if whole_row else torch.softmax(kept_values, dim=-1)
        before = probs.cumsum(dim=-1) - probs
        inside = before < top_p
        if whole_row and (inside.all() or kept_values[inside][-1] == boundary):
            return kept_reference(log_probs, top_k, top_p)  # the nucleus may reach past the candidates
        kept_ids = kept_ids[inside]
    return kept_ids.sort().values


def draw(log_probs: torch.Tensor, kept: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The kept token whose cumulative probability (in id order) first exceeds uniform * total."""
    cumulative = log_probs[kept].exp().cumsum(dim=-1)
    position = torch.searchsorted(cumulative, uniform * cumulative[-1], right=True)
    return kept[position.clamp(max=len(kept) - 1)]


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None,
                reference: bool = False) -> torch.Tensor:
    """The next token of each row (B,) from logits (B, V): greedy at temperature 0, else a draw
    with one uniform per row from `generator`. reference=True filters by the full sort."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    kept_of = kept_reference if reference else kept_fast
    uniforms = torch.rand(logits.size(0), generator=generator, device=logits.device, dtype=torch.float32)
    tokens = []
    for row, uniform in zip(logits, uniforms):  # row by row: a row's token never depends on the others
        log_probs = row_log_probs(row, temperature)
        tokens.append(draw(log_probs, kept_of(log_probs, top_k, top_p), uniform))
    return torch.stack(tokens)
