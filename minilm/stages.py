"""The training stages wired to their data: pretraining on code, fine-tuning on tasks.

    pretrain:  tokenizer (trained if RUN_DIR has none) -> corpus -> token files -> Trainer,
               per-token loss, early stopping on val_loss -> RUN_DIR/pretrain/model.safetensors
    import:    with --init (a pretrained base, minilm/pretrained.py), in place of pretraining: the
               base's tokenizer -> RUN_DIR/tokenizer.json, its weights in fp32 -> the same
               RUN_DIR/pretrain/model.safetensors, the base named in the file's metadata
    finetune:  RUN_DIR/pretrain/model.safetensors -> LoRA / full / top-k layers -> Trainer on the
               task suite, per-example loss, early stopping on ft_metric -> RUN_DIR/finetune/...

Batches are pure functions of (step, micro-batch): the generator that draws them is seeded with
(seed, step, micro), which is what makes resume exact and the data independent of the number of
processes (minilm/trainer.py). The run-directory layout is in minilm/checkpoint.py.
"""
from __future__ import annotations

import copy
import os
import tempfile
from itertools import islice
from pathlib import Path
from typing import Callable, Optional

import torch

from minilm import checkpoint as ckpt
from minilm.config import ConfigError, RunConfig, to_dict
from minilm.distributed import DistInfo, barrier
from minilm.runtime import resolve_device, resolve_dtype, setup_fast_math
from minilm.trainer import Batch, Schedule, Trainer, TrainResult, derive_seed, estimate_loss

FINETUNE_MODES = ("lora", "full", "top_k", "lora+top_k")


# ------------------------------------------------------------------------------ schedules
def pretrain_schedule(cfg: RunConfig) -> Schedule:
    return Schedule(stage="pretrain", max_iters=cfg.max_iters, lr=cfg.lr, min_lr=cfg.min_lr,
                    warmup_iters=cfg.warmup_iters, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                    eval_interval=cfg.eval_interval, log_interval=cfg.log_interval,
                    ckpt_interval=cfg.ckpt_interval, normalize="token", grad_clip=cfg.grad_clip,
                    weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), optimizer=cfg.optimizer,
                    metric="val_loss", patience=cfg.patience, seed=cfg.seed)


def finetune_schedule(cfg: RunConfig) -> Schedule:
    return Schedule(stage="finetune", max_iters=cfg.ft_max_iters, lr=cfg.ft_lr, min_lr=cfg.ft_lr / 10,
                    warmup_iters=cfg.ft_warmup_iters, batch_size=cfg.ft_batch_size,
                    grad_accum=cfg.ft_grad_accum, eval_interval=cfg.ft_eval_interval,
                    log_interval=cfg.log_interval, ckpt_interval=cfg.ckpt_interval, normalize="sequence",
                    grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                    metric=cfg.ft_metric, patience=cfg.patience, seed=cfg.seed)


# ------------------------------------------------------------------------------ batch sources
def pretrain_batches(tokens, batch_size: int, block_size: int, seed: int) -> Callable[[int, int], Batch]:
    """Micro-batch `micro` of step `step`: batch_size random windows of the token stream."""
    from minilm.data import get_batch

    def batch(step: int, micro: int) -> Batch:
        generator = torch.Generator().manual_seed(derive_seed(seed, step, micro))
        return Batch(*get_batch(tokens, batch_size, block_size, generator=generator))
    return batch


def mixed_batches(code: Callable[[int, int], Batch], tasks: Callable[[int, int], Batch], task_fraction: float,
                  seed: int) -> Callable[[int, int], Batch]:
    """The pretraining data mix: each micro-batch is a task-suite batch with probability task_fraction
    (drawn from its own seeded generator, so resume and DDP stay exact), else a code batch."""
    def batch(step: int, micro: int) -> Batch:
        coin = torch.Generator().manual_seed(derive_seed(seed, step, micro, 1))
        return tasks(step, micro) if torch.rand(1, generator=coin).item() < task_fraction else code(step, micro)
    return batch


def sft_batches(examples, batch_size: int, seed: int, group_by_length: int = 0) -> Callable[[int, int], Batch]:
    """Micro-batch `micro` of step `step`: batch_size examples drawn uniformly, right-padded.

    With group_by_length = G > 1, the draws of G consecutive steps are made together and grouped
    by length (sft.length_grouped_rows), which cuts the padding; each batch is still a pure
    function of (step, micro), so resume and DDP stay exact."""
    from minilm.sft import collate_rows, get_sft_batch, length_grouped_rows
    lengths = [len(ids) for ids in examples.ids]

    def batch(step: int, micro: int) -> Batch:
        if group_by_length > 1:
            pool, position = divmod(step, group_by_length)
            generator = torch.Generator().manual_seed(derive_seed(seed, pool, micro, 2))
            rows = length_grouped_rows(lengths, batch_size, group_by_length, generator)[position]
            return Batch(*collate_rows(examples, rows))
        generator = torch.Generator().manual_seed(derive_seed(seed, step, micro))
        return Batch(*get_sft_batch(examples, batch_size, generator=generator))
    return batch


# ------------------------------------------------------------------------------ shared set-up
def runtime_for(cfg: RunConfig):
    """(device, dtype) of a run, with the device's fast-math settings applied."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dtype = resolve_dtype(cfg.dtype, device)
    setup_fast_math(device)
    return device, dtype


def task_suite(cfg: RunConfig) -> dict:
    """The task suite a run trains on: {split: [task, ...]}."""
    from minilm.tasks import generate_suite
    return generate_suite(seed=cfg.task_seed, n_train=cfg.task_train_size)


def ensure_tokenizer(cfg: RunConfig, dist: DistInfo = DistInfo(), log=print):
    """RUN_DIR/tokenizer.json: if the run has none, the base's (with --init) or one trained on the
    corpus's train split."""
    from minilm.tokenizer import Tokenizer, TokenizerFileError
    path = Path(cfg.out_dir) / ckpt.TOKENIZER_FILE
    if not path.is_file() and dist.is_main:
        if cfg.init:
            from minilm.pretrained import load_base_tokenizer, resolve_init
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
    from minilm.corpus import build_corpus
    from minilm.sft import SPECIAL_TOKENS
    from minilm.tokenizer import Tokenizer
    corpus = build_corpus(cfg.corpus, cfg.corpus_max_bytes)
    log(f"tokenizer: training a {cfg.model.vocab_size}-token BPE ({cfg.tokenizer_backend}) on "
        f"{corpus.n_bytes('train'):,} bytes")
    return Tokenizer.train(list(corpus.texts("train")), cfg.model.vocab_size, special_tokens=SPECIAL_TOKENS,
                           pattern=cfg.tokenizer_pattern, backend=cfg.tokenizer_backend)


def _save_config(cfg: RunConfig, dist: DistInfo) -> None:
    if dist.is_main:
        ckpt.write_json_atomic(Path(cfg.out_dir) / ckpt.CONFIG_FILE, to_dict(cfg))


# ------------------------------------------------------------------------------ pretraining
def pretrain_data(cfg: RunConfig, tok, dist: DistInfo = DistInfo(), log=print):
    """The corpus tokenized with tok (minilm.data.TokenData), built once and cached in data_dir."""
    from minilm.corpus import build_corpus
    from minilm.data import prepare_tokens, tokenizer_fingerprint
    corpus = build_corpus(cfg.corpus, cfg.corpus_max_bytes)
    token_dir = Path(cfg.data_dir) / f"tokens-{corpus.hash[:10]}-{tokenizer_fingerprint(tok)[:10]}"
    if dist.is_main:
        prepare_tokens(corpus, tok, token_dir, log=log)
    barrier(dist)
    return prepare_tokens(corpus, tok, token_dir, log=lambda *_: None)


def run_pretrain(cfg: RunConfig, dist: DistInfo = DistInfo(), resume: bool = False, log=print) -> TrainResult:
    from minilm.data import iter_eval_batches, tokenizer_fingerprint
    from minilm.model import GPT
    device, dtype = runtime_for(cfg)
    _save_config(cfg, dist)
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
        from minilm.sft import build_examples
        examples = build_examples(tok, task_suite(cfg)["train"], block)
        log(f"data mix: {cfg.pretrain_task_mix:.0%} of pretraining batches are task-suite train examples "
            f"({len(examples)} examples)")
        task_batches = sft_batches(examples, cfg.ft_batch_size, cfg.seed + 1, cfg.ft_group_by_length)
        batches = mixed_batches(batches, task_batches, cfg.pretrain_task_mix, cfg.seed)
    trainer = Trainer(model, pretrain_schedule(cfg), batches, evaluate, save_best, cfg.out_dir,
                      device=device, dtype=dtype, dist=dist, compile=cfg.compile, share_prefix=cfg.model.dropout == 0,
                      run_info={**info, "config": to_dict(cfg)}, peak_flops_override=cfg.peak_flops, log=log)
    return trainer.fit(resume=resume)


def import_base(cfg: RunConfig, dist: DistInfo = DistInfo(), log=print) -> str:
    """The pretraining stage of a run with --init: the base's weights, checked against cfg.model and
    dequantised to fp32, written as RUN_DIR/pretrain/model.safetensors (which fine-tuning, evaluation
    and sample.py read as they read pretrained weights); returns the base's description."""
    from minilm.data import tokenizer_fingerprint
    from minilm.pretrained import check_model_config, describe, load_base_model, resolve_init
    _save_config(cfg, dist)
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


# ------------------------------------------------------------------------------ fine-tuning
def prepare_finetune_model(model, cfg: RunConfig, log=print) -> Optional[list]:
    """Make the wanted parameters trainable; return LoRA+ param groups (LoRA) or None."""
    from minilm import freeze, lora
    if cfg.finetune not in FINETUNE_MODES:
        raise ConfigError(f"--finetune must be one of {', '.join(FINETUNE_MODES)}, got {cfg.finetune!r}")
    groups = None
    if cfg.finetune in ("top_k", "lora+top_k"):
        freeze.freeze_all(model)
    if cfg.finetune in ("lora", "lora+top_k"):
        # The adapters' initial A, from the run's seed: the same whether pretraining ran in this process
        # or not (torch seeds each new process at random).
        torch.manual_seed(cfg.seed)
        lora.apply_lora(model, targets=cfg.lora_targets, r=cfg.lora_r, alpha=cfg.lora_alpha,
                        dropout=cfg.lora_dropout, dora=cfg.lora_dora)
    if cfg.finetune in ("top_k", "lora+top_k"):  # full weights of the top blocks, next to any adapters
        freeze.unfreeze_top_k_blocks(model, cfg.top_k_layers)
    if cfg.finetune in ("lora", "lora+top_k"):
        groups = freeze.lora_param_groups(model, cfg.ft_lr, cfg.weight_decay, cfg.loraplus_ratio)
    log(f"finetune ({cfg.finetune}): {freeze.trainable_parameter_report(model)}")
    return groups


def run_finetune(cfg: RunConfig, dist: DistInfo = DistInfo(), resume: bool = False, log=print) -> TrainResult:
    from minilm import lora
    from minilm.data import tokenizer_fingerprint
    from minilm.sft import add_embedding_noise, build_examples, iter_sft_batches
    if cfg.ft_metric == "pass@1" and cfg.ft_pass_tasks <= 0:
        raise ConfigError("--ft_metric pass@1 needs validation tasks to run; set --ft_pass_tasks N (e.g. 20)")
    device, dtype = runtime_for(cfg)
    _save_config(cfg, dist)
    run_dir = Path(cfg.out_dir)
    base_path = run_dir / "pretrain" / ckpt.MODEL_FILE
    if not (run_dir / ckpt.TOKENIZER_FILE).is_file() or not base_path.is_file():
        raise ConfigError(f"{run_dir} has no pretrained model ({base_path}); run --stage pretrain first")
    tok = ensure_tokenizer(cfg, dist, log)
    tok_hash = tokenizer_fingerprint(tok)
    model, metadata = ckpt.load_model_file(base_path, device, expected=cfg.model)
    if metadata.get("tokenizer_sha256") not in (None, tok_hash):
        raise ckpt.CheckpointError(f"{base_path}: pretrained with a different tokenizer than "
                                   f"{run_dir / ckpt.TOKENIZER_FILE}; pretrain again")
    groups = prepare_finetune_model(model, cfg, log)
    if cfg.ft_neftune_alpha > 0:
        add_embedding_noise(model, cfg.ft_neftune_alpha)

    suite = task_suite(cfg)
    block = cfg.model.block_size
    train_examples = build_examples(tok, suite["train"], block)
    valid = suite["valid"][:cfg.ft_eval_tasks] if cfg.ft_eval_tasks else suite["valid"]
    val_examples = build_examples(tok, valid, block)
    log(f"finetune data: {len(train_examples)} train / {len(val_examples)} valid examples "
        f"({train_examples.n_dropped + val_examples.n_dropped} longer than the context dropped)")
    pass_tasks = [t for t in suite["valid"] if t.get("kind", "generate") != "explain"][:cfg.ft_pass_tasks]

    def evaluate(m) -> dict:
        metrics = estimate_loss(m, iter_sft_batches(val_examples, cfg.ft_batch_size), "sequence", device, dtype)
        if pass_tasks:
            metrics["pass@1"] = _pass_at_1(m, tok, pass_tasks, cfg, device)
        return metrics

    base_sha = ckpt.file_sha256(base_path)
    info = {"tokenizer_sha256": tok_hash, "base_sha256": base_sha}

    def save_best(m, stage_dir: Path, metrics: dict) -> None:
        if cfg.finetune == "lora":
            _save_adapter_atomic(m, stage_dir)
            ckpt.write_json_atomic(stage_dir / "base.json", {
                "base": os.path.relpath(base_path, stage_dir), "sha256": base_sha,
                "step": metrics["step"], cfg.ft_metric: metrics[cfg.ft_metric]})
        else:  # full weights; adapters next to top-k blocks are merged into a copy first
            plain = lora.merge_and_unload(copy.deepcopy(m)) if lora.lora_layers(m) else m
            ckpt.save_weights(stage_dir / ckpt.MODEL_FILE, ckpt.trainable_state(plain, trainable_only=False),
                              cfg.model, {**info, "step": metrics["step"]})

    batches = sft_batches(train_examples, cfg.ft_batch_size, cfg.seed, cfg.ft_group_by_length)
    trainer = Trainer(model, finetune_schedule(cfg), batches, evaluate, save_best, cfg.out_dir, device=device,
                      dtype=dtype, dist=dist, compile=cfg.compile, share_prefix=finetune_is_noiseless(cfg),
                      param_groups=groups, run_info={**info, "config": to_dict(cfg)}, peak_flops_override=cfg.peak_flops,
                      log=log)
    return trainer.fit(resume=resume)


def finetune_is_noiseless(cfg: RunConfig) -> bool:
    """No dropout and no NEFTune: a fine-tuning step may compute the start its rows share once."""
    return cfg.model.dropout == 0 and cfg.lora_dropout == 0 and cfg.ft_neftune_alpha == 0


def _save_adapter_atomic(model, stage_dir: Path) -> None:
    """lora.save_adapter into a temporary folder, then each file renamed into place."""
    from minilm import lora
    with tempfile.TemporaryDirectory(dir=stage_dir) as tmp:
        lora.save_adapter(model, tmp)
        for name in sorted(os.listdir(tmp)):  # adapter_config.json before adapter_model.safetensors
            with open(Path(tmp) / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(Path(tmp) / name, stage_dir / name)


def _pass_at_1(model, tok, pass_tasks: list, cfg: RunConfig, device) -> float:
    """Greedy pass@1 on a few validation tasks, generated and run by minilm.evaluate."""
    from minilm.evaluate import evaluate_model
    from minilm.metrics import summarize_group
    records = evaluate_model(model, tok, pass_tasks, cfg.eval_max_new_tokens, with_teacher_forcing=False)
    return float(summarize_group(records).get("pass@1", 0.0))
