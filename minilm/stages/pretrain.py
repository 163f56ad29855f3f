"""The pretrain stage: next-token prediction on code, or the import of a pretrained base.

    corpus (the stdlib or --corpus) -> token files -> Trainer, per-token loss, early stopping on
    val_loss -> RUN_DIR/pretrain/model.safetensors

With pretrain_task_mix > 0 a share of the micro-batches comes from the task suite's train split
(the held-out splits never). With --init (minilm/pretrained.py) the stage imports the base's
weights instead, checked against the run's model config and dequantised to fp32, into the same
file. Batches are pure functions of (step, micro-batch) (minilm/seeds.py), which is what makes
resume exact and the data independent of the number of processes (minilm/training/trainer.py).
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Callable

import torch

from minilm import checkpoint as ckpt, seeds
from minilm.config import RunConfig, to_dict
from minilm.data.corpus import build_corpus
from minilm.data.sft import build_examples
from minilm.data.tokens import get_batch, iter_eval_batches, prepare_tokens, tokenizer_fingerprint
from minilm.loss import bits_per_byte
from minilm.model.gpt import GPT
from minilm.pretrained import check_model_config, describe, load_base_model, resolve_init
from minilm.runtime import runtime_for
from minilm.stages.common import task_suite
from minilm.stages.finetune import sft_batches
from minilm.stages.tokenizer import ensure_tokenizer
from minilm.training.distributed import DistInfo, barrier
from minilm.training.trainer import Batch, TrainSettings, Trainer, TrainResult, estimate_loss


def pretrain_settings(cfg: RunConfig) -> TrainSettings:
    return TrainSettings(stage="pretrain", max_iters=cfg.max_iters, lr=cfg.lr, min_lr=cfg.min_lr,
                         warmup_iters=cfg.warmup_iters, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                         eval_interval=cfg.eval_interval, log_interval=cfg.log_interval,
                         ckpt_interval=cfg.ckpt_interval, normalize="token", grad_clip=cfg.grad_clip,
                         weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), optimizer=cfg.optimizer,
                         metric="val_loss", patience=cfg.patience, seed=cfg.seed)


def pretrain_batches(tokens, batch_size: int, block_size: int, seed: int) -> Callable[[int, int], Batch]:
    """Micro-batch `micro` of step `step`: batch_size random windows of the token stream."""

    def batch(step: int, micro: int) -> Batch:
        generator = torch.Generator().manual_seed(seeds.batch_seed(seed, step, micro))
        return Batch(*get_batch(tokens, batch_size, block_size, generator=generator))
    return batch


def mixed_batches(code: Callable[[int, int], Batch], tasks: Callable[[int, int], Batch], task_fraction: float,
                  seed: int) -> Callable[[int, int], Batch]:
    """The pretraining data mix: each micro-batch is a task-suite batch with probability task_fraction
    (drawn from its own seeded generator, so resume and DDP stay exact), else a code batch."""
    def batch(step: int, micro: int) -> Batch:
        coin = torch.Generator().manual_seed(seeds.data_mix_seed(seed, step, micro))
        return tasks(step, micro) if torch.rand(1, generator=coin).item() < task_fraction else code(step, micro)
    return batch


def pretrain_data(cfg: RunConfig, tok, dist: DistInfo = DistInfo(), log=print):
    """The corpus tokenized with tok (minilm.data.tokens.TokenData), built once and cached in data_dir."""
    corpus = build_corpus(cfg.corpus, cfg.corpus_max_bytes)
    token_dir = Path(cfg.data_dir) / f"tokens-{corpus.hash[:10]}-{tokenizer_fingerprint(tok)[:10]}"
    if dist.is_main:
        prepare_tokens(corpus, tok, token_dir, log=log)
    barrier(dist)
    return prepare_tokens(corpus, tok, token_dir, log=lambda *_: None)


def run_pretrain(cfg: RunConfig, dist: DistInfo = DistInfo(), resume: bool = False, log=print) -> TrainResult:
    device, dtype = runtime_for(cfg)
    tok = ensure_tokenizer(cfg, dist, log)
    tok_hash = tokenizer_fingerprint(tok)
    data = pretrain_data(cfg, tok, dist, log)
    corpus_hash = data.meta["corpus_hash"]
    log(f"data: {len(data.train):,} train / {len(data.val):,} val tokens (corpus {corpus_hash[:12]})")

    torch.manual_seed(cfg.seed)  # the initial weights
    model = GPT(cfg.model).to(device)
    block = cfg.model.block_size

    def evaluate(m) -> dict:
        batches = iter_eval_batches(data.val, cfg.batch_size, block)
        return estimate_loss(m, islice(batches, cfg.eval_iters) if cfg.eval_iters > 0 else batches,
                             "token", device, dtype)

    info = {"tokenizer_sha256": tok_hash, "corpus_hash": corpus_hash}

    def save_best(m, stage_dir: Path, metrics: dict) -> None:
        ckpt.save_weights(stage_dir / ckpt.MODEL_FILE, ckpt.trainable_state(m, trainable_only=False),
                          cfg.model, {**info, "step": metrics["step"], "val_loss": metrics["val_loss"]})

    batches = pretrain_batches(data.train, cfg.batch_size, block, cfg.seed)
    if cfg.pretrain_task_mix > 0:  # the task suite's train split in the mix (the valid/test splits never)
        examples = build_examples(tok, task_suite(cfg)["train"], block)
        log(f"data mix: {cfg.pretrain_task_mix:.0%} of pretraining batches are task-suite train examples "
            f"({len(examples)} examples)")
        task_batches = sft_batches(examples, cfg.ft_batch_size, cfg.seed + 1, cfg.ft_group_by_length)
        batches = mixed_batches(batches, task_batches, cfg.pretrain_task_mix, cfg.seed)
    trainer = Trainer(model, pretrain_settings(cfg), batches, evaluate, save_best, cfg.out_dir,
                      device=device, dtype=dtype, dist=dist, compile=cfg.compile, share_prefix=cfg.model.dropout == 0,
                      run_info={**info, "config": to_dict(cfg)}, peak_flops_override=cfg.peak_flops, log=log)
    return trainer.fit(resume=resume)


def import_base(cfg: RunConfig, dist: DistInfo = DistInfo(), log=print) -> str:
    """The pretraining stage of a run with --init: the base's weights, checked against cfg.model and
    dequantised to fp32, written as RUN_DIR/pretrain/model.safetensors (which fine-tuning, evaluation
    and sample.py read as they read pretrained weights); returns the base's description."""
    base = resolve_init(cfg.init)
    check_model_config(base, cfg.model)  # before the tokenizer: a wrong preset fails at once
    tok = ensure_tokenizer(cfg, dist, log)
    description = describe(base)
    if dist.is_main:
        log(f"pretrained: {description} (pretraining skipped; the weights of {base.path})")
        model = load_base_model(base, cfg.model)
        ckpt.save_weights(Path(cfg.out_dir) / "pretrain" / ckpt.MODEL_FILE,
                          ckpt.trainable_state(model, trainable_only=False), cfg.model,
                          {"tokenizer_sha256": tokenizer_fingerprint(tok), "pretrained": description})
        log(f"pretrain: {model.num_parameters() / 1e6:.1f}M parameters written to "
            f"{cfg.out_dir}/pretrain/{ckpt.MODEL_FILE}")
    barrier(dist)
    return description


def pretrain_bits_per_byte(cfg: RunConfig, model, tok, log=print) -> float:
    """Validation bits per byte of a model on the held-out corpus files: total NLL / ln 2 / bytes."""
    device, dtype = runtime_for(cfg)
    data = pretrain_data(cfg, tok, log=lambda *_: None)
    metrics = estimate_loss(model, iter_eval_batches(data.val, cfg.batch_size, cfg.model.block_size),
                            "token", device, dtype)
    n_targets = len(data.val) - 1  # every validation token after the first is predicted once
    return bits_per_byte(metrics["val_token_loss"] * n_targets, data.val_bytes)
