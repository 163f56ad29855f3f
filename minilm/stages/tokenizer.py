"""The tokenizer stage: RUN_DIR/tokenizer.json, trained on the corpus or imported from the base.

Without --init, a byte-level BPE of model.vocab_size tokens is trained on the corpus's train split
(minilm/tokenizer/), with minilm's special tokens; with --init (a pretrained base) the base's own
tokenizer is imported instead (minilm/pretrained.py). Every later stage loads it from the run.
"""
from __future__ import annotations

from pathlib import Path

from minilm import checkpoint as ckpt
from minilm.config import ConfigError, RunConfig
from minilm.data.corpus import build_corpus
from minilm.data.sft import SPECIAL_TOKENS
from minilm.pretrained import load_base_tokenizer, resolve_init
from minilm.tokenizer import Tokenizer, TokenizerFileError
from minilm.training.distributed import DistInfo, barrier


def ensure_tokenizer(cfg: RunConfig, dist: DistInfo = DistInfo(), log=print, replace: bool = False):
    """RUN_DIR/tokenizer.json: if the run has none (or replace), the base's (with --init) or one
    trained on the corpus's train split, written over the old one only once it is complete."""
    path = Path(cfg.out_dir) / ckpt.TOKENIZER_FILE
    if (replace or not path.is_file()) and dist.is_main:
        if cfg.init:
            base = resolve_init(cfg.init)
            log(f"tokenizer: imported from {base.path} (not trained)")
            tok = load_base_tokenizer(base)
        else:
            tok = _train_tokenizer(cfg, log)
        with ckpt.atomic_path(path) as tmp:
            tok.save(str(tmp))
    barrier(dist)
    try:
        tok = Tokenizer.load(str(path))
    except TokenizerFileError as e:
        raise ckpt.CheckpointError(str(e)) from None
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"{path} has {tok.vocab_size} tokens but the model only {cfg.model.vocab_size}; "
                          f"use --vocab_size {tok.vocab_size} or delete the tokenizer to retrain it")
    return tok


def _train_tokenizer(cfg: RunConfig, log=print):
    corpus = build_corpus(cfg.corpus, cfg.corpus_max_bytes)
    log(f"tokenizer: training a {cfg.model.vocab_size}-token BPE ({cfg.tokenizer_backend}) on "
        f"{corpus.n_bytes('train'):,} bytes")
    return Tokenizer.train(list(corpus.texts("train")), cfg.model.vocab_size, special_tokens=SPECIAL_TOKENS,
                           pattern=cfg.tokenizer_pattern, backend=cfg.tokenizer_backend)
