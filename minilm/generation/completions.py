"""From prompts to completions: many prompts decoded together, and the code read out of a reply.

    completions = generate_from_prompts(model, prompts, stop_ids, decode_reply, max_new_tokens=128)
    code = extract_code(reply)   # the ```python block of an instruct model's answer

generate_from_prompts takes token ids in any prompt format (our task format, ChatML, HumanEval's
plain prefix) and decodes them in the cheapest way that gives the same answers as one prompt at a
time: a rotary model's prompts go into one continuously refilled pool
(minilm/generation/continuous_batching.py); prompts whose answer could outgrow the context, and a
model with learned positions, go in fixed batches (GPT.generate), padded on the left for a rotary
model and of equal length otherwise.
"""
from __future__ import annotations

import re
import time
from typing import Callable, Optional, Sequence

import torch

from minilm.generation.continuous_batching import fits_pool, generate_pooled, left_padded


# An instruct model tends to answer in Markdown, the code in a fenced block with prose around it.
FENCED_BLOCK = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)

def extract_code(reply: str) -> str:
    """The ```python block of a reply (else its first fenced block, else the reply itself).

    A block cut off by the token limit (no closing fence) runs to the end of the reply.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCED_BLOCK.finditer(reply)]
    python = [code for language, code in blocks if language in ("python", "py", "python3")]
    if python or blocks:
        return (python or [code for _, code in blocks])[0]
    return reply

def fence_closed(tok) -> Callable[[list[int]], bool]:
    """stop_when for generation: True once a reply's first fenced block is closed, since
    extract_code reads nothing after it (the prose an instruct model adds would cost tokens only).
    Decodes a row only when its newest token holds a backtick."""
    backtick = {i for i, piece in enumerate(tok.strings) if "`" in piece}

    def done(new_ids: list[int]) -> bool:
        if new_ids[-1] not in backtick:
            return False
        return tok.decode(new_ids).count("```") >= 2
    return done

@torch.no_grad()
def generate_from_prompts(model, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int],
                          decode: Callable[[list[int]], str], max_new_tokens: int = 128,
                          n_samples: int = 1, temperature: float = 0.0, top_k: Optional[int] = None,
                          top_p: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                          stop_when: Optional[Callable[[int, list[int]], bool]] = None,
                          progress: Optional[Callable[[int, int], None]] = None,
                          continuous: bool = True) -> list[Optional[list[str]]]:
    """n_samples decoded completions per prompt of token ids, in any prompt format.

    A prompt longer than the context gets None. Up to batch_size rows decode together (each prompt
    repeated n_samples times). A rotary model decodes them as one pool that refills as rows finish
    (minilm.generation.continuous_batching), except prompts whose answer could outgrow the context, which go
    in fixed batches as a model with learned positions does: prompts of similar length, left-padded,
    for a rotary model; of equal length otherwise (batches_by_length). Generation stops at stop_ids
    or when stop_when(prompt index, new ids) says so; `decode` turns a row's new ids (stop token
    included) into the completion's text. Sampling is seeded: the same call gives the same
    completions. progress(prompts done, prompts that fit) is called as prompts finish.
    continuous=False puts every prompt in fixed batches (the simpler path, the benchmark's baseline).
    """
    if n_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"n_samples and max_new_tokens must be >= 1, got {n_samples}, {max_new_tokens}")
    if temperature == 0 and n_samples > 1:
        raise ValueError("greedy decoding (temperature 0) gives n identical samples; "
                         "set temperature > 0 for pass@k with n_samples > 1")
    block_size = model.config.block_size
    completions: list[Optional[list[str]]] = [None] * len(prompts)
    rotary = model.config.position == "rope"
    pooled = [i for i, p in enumerate(prompts)
              if continuous and rotary and fits_pool(len(p), max_new_tokens, block_size)]
    in_pool = set(pooled)
    rest = [i for i in range(len(prompts)) if i not in in_pool]
    batches = [[rest[j] for j in batch] for batch in batches_by_length(
        [len(prompts[i]) for i in rest], max(1, batch_size // n_samples), block_size, rotary)]
    done, total = 0, len(pooled) + sum(len(chunk) for chunk in batches)  # the prompts that fit

    def finished(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)
    if pooled:
        new_ids = generate_pooled(model, [prompts[i] for i in pooled], max_new_tokens, stop_ids,
                                  pool_size=batch_size, n_samples=n_samples, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, on_prompt_done=lambda _: finished(1),
                                  stop_when=None if stop_when is None else
                                  lambda j, ids: stop_when(pooled[j], ids))
        for i, samples in zip(pooled, new_ids):
            completions[i] = [decode(ids) for ids in samples]
    device = next(model.parameters()).device
    for batch_number, chunk in enumerate(batches):
        idx, attention_mask = left_padded([prompts[i] for i in chunk for _ in range(n_samples)])  # (rows * n, width)
        width = idx.size(1)
        mask = None if attention_mask.all() else attention_mask.to(device)
        out = model.generate(idx.to(device), max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop_tokens=stop_ids, seed=seed + batch_number, attention_mask=mask,
                             stop_when=None if stop_when is None else
                             lambda row, ids, chunk=chunk: stop_when(chunk[row // n_samples], ids))
        new = out[:, width:].tolist()
        for j, i in enumerate(chunk):
            completions[i] = [decode(new[j * n_samples + s]) for s in range(n_samples)]
        finished(len(chunk))
    return completions

def progress_logger(what: str, log=print, every: float = 60.0):
    """A progress(done, total) callback that logs at most once a minute, and at the end."""
    started, last = time.perf_counter(), [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every or done == total:
            last[0] = now
            log(f"{what}: {done}/{total} answers generated in {now - started:.0f} s")
    return progress

def batches_by_length(lengths: Sequence[int], rows_per_batch: int, block_size: int,
                      padded: bool) -> list[list[int]]:
    """Indices of the prompts that fit the context, in batches of up to rows_per_batch.

    padded: sorted by length and cut in order, so a batch's rows differ little in length and the
    left padding stays short. Not padded: each batch holds prompts of one length only.
    """
    fits = sorted((n, i) for i, n in enumerate(lengths) if n <= block_size)
    if padded:
        groups = [[i for _, i in fits]]
    else:
        by_length: dict[int, list[int]] = {}
        for n, i in fits:
            by_length.setdefault(n, []).append(i)
        groups = list(by_length.values())
    return [group[start:start + rows_per_batch] for group in groups
            for start in range(0, len(group), rows_per_batch)]
