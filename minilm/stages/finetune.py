"""The finetune stage: the pretrained weights, adapted to the task suite.

    RUN_DIR/pretrain/model.safetensors -> LoRA / full / top-k blocks -> Trainer on the task
    suite's train split, per-example loss on the answer tokens, early stopping on ft_metric
    -> RUN_DIR/finetune/ (adapter_config.json + adapter_model.safetensors, or model.safetensors)

Examples are rendered in the format the tokenizer implies (minilm/data/sft.py: ours, or ChatML for
a chat base); with ft_group_by_length, batches of similar length cut the padding. With
--sft_source, functions mined from the stdlib or a folder (minilm/data/mined.py) are mixed in as
sft_mined_fraction of the training examples, their held-out part joins validation, and
RUN_DIR/finetune/mined.json records how many each filter kept.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from minilm import checkpoint as ckpt, seeds
from minilm.config import ConfigError, RunConfig, to_dict
from minilm.data.mined import MinedSet, mine_source
from minilm.data.mining import format_counts
from minilm.data.sft import (add_embedding_noise, build_examples, collate_rows, get_sft_batch, iter_sft_batches,
                             length_grouped_rows, mix_examples)
from minilm.data.tokens import tokenizer_fingerprint
from minilm.evaluation.evaluate import evaluate_model
from minilm.evaluation.metrics import summarize_group
from minilm.formats import peft
from minilm.model import lora
from minilm.runtime import runtime_for
from minilm.stages.common import task_suite
from minilm.stages.own_answers import load_own_answers, with_own_answers
from minilm.stages.tokenizer import ensure_tokenizer
from minilm.training import freeze
from minilm.training.distributed import DistInfo
from minilm.training.trainer import Batch, TrainSettings, Trainer, TrainResult, estimate_loss

MINED_FILE = "mined.json"  # in RUN_DIR/finetune/: what --sft_source mined, filter by filter


def finetune_settings(cfg: RunConfig) -> TrainSettings:
    return TrainSettings(stage="finetune", max_iters=cfg.ft_max_iters, lr=cfg.ft_lr, min_lr=cfg.ft_lr / 10,
                         warmup_iters=cfg.ft_warmup_iters, batch_size=cfg.ft_batch_size,
                         grad_accum=cfg.ft_grad_accum, eval_interval=cfg.ft_eval_interval,
                         log_interval=cfg.log_interval, ckpt_interval=cfg.ckpt_interval, normalize="sequence",
                         grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                         metric=cfg.ft_metric, patience=cfg.patience, seed=cfg.seed)


def sft_batches(examples, batch_size: int, seed: int, group_by_length: int = 0) -> Callable[[int, int], Batch]:
    """Micro-batch `micro` of step `step`: batch_size examples drawn uniformly, right-padded.

    With group_by_length = G > 1, the draws of G consecutive steps are made together and grouped
    by length (sft.length_grouped_rows), which cuts the padding; each batch is still a pure
    function of (step, micro), so resume and DDP stay exact."""
    lengths = [len(ids) for ids in examples.ids]

    def batch(step: int, micro: int) -> Batch:
        if group_by_length > 1:
            pool, position = divmod(step, group_by_length)
            generator = torch.Generator().manual_seed(seeds.length_group_seed(seed, pool, micro))
            rows = length_grouped_rows(lengths, batch_size, group_by_length, generator)[position]
            return Batch(*collate_rows(examples, rows))
        generator = torch.Generator().manual_seed(seeds.batch_seed(seed, step, micro))
        return Batch(*get_sft_batch(examples, batch_size, generator=generator))
    return batch


def prepare_finetune_model(model, cfg: RunConfig, log=print) -> Optional[list]:
    """Make the wanted parameters trainable; return LoRA+ param groups (LoRA) or None."""
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
    device, dtype = runtime_for(cfg)
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
    own = load_own_answers(cfg)
    train = with_own_answers(suite["train"], own)
    if own:
        log(f"finetune data: {sum(code is not None for code in own.values())} of {len(own)} sampled training "
            f"tasks target the model's own passing answer (RUN_DIR/own_answers), the rest their reference")
    train_examples = build_examples(tok, train, block)
    valid = suite["valid"][:cfg.ft_eval_tasks] if cfg.ft_eval_tasks else suite["valid"]
    mined = mine_for_finetuning(cfg, log) if cfg.sft_source else None
    if mined:
        readable = [r for r in mined.records if not any(s in r["text"] + r["code"] for s in tok.special_tokens)]
        mined_train = build_examples(tok, [r for r in readable if r["split"] == "train"], block)
        log(f"finetune data: {len(mined_train)} mined train examples fit the context ({mined_train.n_dropped} "
            f"longer dropped, {len(mined.records) - len(readable)} with a special token's text left out), "
            f"drawn as {cfg.sft_mined_fraction:.0%} of the examples")
        train_examples = mix_examples(train_examples, mined_train, cfg.sft_mined_fraction)
        mined_valid = [r for r in readable if r["split"] == "valid"]
        valid = valid + (mined_valid[:cfg.ft_eval_tasks] if cfg.ft_eval_tasks else mined_valid)
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
        if mined:
            ckpt.write_json_atomic(stage_dir / MINED_FILE, {"summary": mined.summary(), "source": cfg.sft_source,
                                                            "counts": dataclasses.asdict(mined.counts)})
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
    trainer = Trainer(model, finetune_settings(cfg), batches, evaluate, save_best, cfg.out_dir, device=device,
                      dtype=dtype, dist=dist, compile=cfg.compile, share_prefix=finetune_is_noiseless(cfg),
                      param_groups=groups, run_info={**info, "config": to_dict(cfg)}, peak_flops_override=cfg.peak_flops,
                      log=log)
    return trainer.fit(resume=resume)


def mine_for_finetuning(cfg: RunConfig, log=print) -> MinedSet:
    """The functions mined from cfg.sft_source, with a log of what each filter kept."""
    start = time.perf_counter()
    mined = mine_source(cfg.sft_source)
    log(f"finetune data: {mined.summary()} in {time.perf_counter() - start:.1f} s")
    for line in format_counts(mined.counts).splitlines():
        log(f"  {line}")
    if not mined.records:
        log(f"warning: no function of {cfg.sft_source} passed the filters; fine-tuning on the task suite alone")
    return mined


def finetune_is_noiseless(cfg: RunConfig) -> bool:
    """No dropout and no NEFTune: a fine-tuning step may compute the start its rows share once."""
    return cfg.model.dropout == 0 and cfg.lora_dropout == 0 and cfg.ft_neftune_alpha == 0


def _save_adapter_atomic(model, stage_dir: Path) -> None:
    """peft.save_adapter into a temporary folder, then each file renamed into place."""
    with tempfile.TemporaryDirectory(dir=stage_dir) as tmp:
        peft.save_adapter(model, tmp)
        for name in sorted(os.listdir(tmp)):  # adapter_config.json before adapter_model.safetensors
            with open(Path(tmp) / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(Path(tmp) / name, stage_dir / name)


def _pass_at_1(model, tok, pass_tasks: list, cfg: RunConfig, device) -> float:
    """Greedy pass@1 on a few validation tasks, generated and run by minilm.evaluation.evaluate."""
    records = evaluate_model(model, tok, pass_tasks, cfg.eval_max_new_tokens, with_teacher_forcing=False)
    return float(summarize_group(records).get("pass@1", 0.0))
