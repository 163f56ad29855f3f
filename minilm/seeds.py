"""Every random stream of a run, named in one place.

A run has one --seed. Each thing that draws random numbers gets its own seed derived from it and
from where it is (step, micro-batch, row), so every draw is a pure function of those integers:
a resumed run repeats the uninterrupted one bit for bit, a run on N processes draws what one
process would, and two streams never share numbers. Add a stream here, with a tag of its own;
a tag's value is part of what a seed reproduces, so never reuse or renumber one.
"""
from __future__ import annotations

import hashlib

# tags, the last part of a stream's tuple (the batch sampler's tuple has none: it came first)
DATA_MIX = 1  # pretraining: is this micro-batch a task-suite batch or a code batch?
LENGTH_GROUPS = 2  # fine-tuning: the draws of G steps made together and grouped by length
DROPOUT = 3  # dropout, LoRA dropout and NEFTune noise: the global generator before a micro-batch
SAMPLING = 4  # a sampled generation row (prompt, sample) in continuous batching
OWN_ANSWERS = 5  # the own_answers stage: the sampling seed of a chunk of training tasks


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers, e.g. (seed, step, rank): distinct tuples, unrelated seeds."""
    digest = hashlib.sha256(repr(tuple(int(p) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_seed(seed: int, step: int, micro: int) -> int:
    """The batch sampler of micro-batch `micro` of step `step`."""
    return derive_seed(seed, step, micro)


def data_mix_seed(seed: int, step: int, micro: int) -> int:
    return derive_seed(seed, step, micro, DATA_MIX)


def length_group_seed(seed: int, pool: int, micro: int) -> int:
    return derive_seed(seed, pool, micro, LENGTH_GROUPS)


def dropout_seed(seed: int, step: int, micro: int) -> int:
    return derive_seed(seed, step, micro, DROPOUT)


def sampling_seed(seed: int, prompt: int, sample: int) -> int:
    """One generation row's generator: the same row draws the same numbers in any pool."""
    return derive_seed(seed, prompt, sample, SAMPLING)


def own_answers_seed(seed: int, chunk_start: int) -> int:
    """The sampling seed of the own_answers chunk that starts at task chunk_start: a resumed stage
    draws what an uninterrupted one drew."""
    return derive_seed(seed, chunk_start, OWN_ANSWERS)
