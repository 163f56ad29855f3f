"""Reuse: a finished stage is skipped while what it reads is unchanged.

Each stage has a key: a hash of the config fields it reads plus the files it builds on (the
tokenizer for pretraining, the pretrained weights for fine-tuning, ...). When a stage finishes,
RUN_DIR/stages.json records its key and wall time; next time the stage is skipped if its key is
unchanged, so changing a fine-tuning option redoes fine-tuning and evaluation but not
pretraining. `--force` redoes a stage whatever its key. Within the eval stage each part (a model's
tasks, its requests, its HumanEval) is saved with its own key as it finishes (eval_part_key): an
interrupted evaluation resumes, and a new fine-tuning of the same base does not re-evaluate the base.

With a pretrained base (`--init`) the tokenizer and pretrain stages import it; their keys are then
the base's files and the model config, and the training fields they would otherwise read change
nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from minilm import checkpoint as ckpt
from minilm.config import ConfigError, RunConfig, to_dict
from minilm.data.mined import source_fingerprint
from minilm.data.requests import requests_fingerprint
from minilm.data.tasks import heldout_fingerprint, suite_fingerprint
from minilm.pretrained import fingerprint, resolve_init

STAGES_FILE, REPORT_NAME = "stages.json", "report"

# The config fields each stage reads (besides the files of the stages before it).
_DATA_FIELDS = ("corpus", "corpus_max_bytes")

STAGE_FIELDS = {
    "tokenizer": (*_DATA_FIELDS, "tokenizer_backend", "tokenizer_pattern", "model.vocab_size"),
    "pretrain": (*_DATA_FIELDS, "model", "seed", "task_seed", "pretrain_task_mix", "ft_batch_size",
                 "ft_group_by_length", "dtype", "batch_size", "grad_accum", "max_iters", "lr", "min_lr",
                 "warmup_iters", "weight_decay", "beta1", "beta2", "grad_clip", "optimizer", "eval_interval",
                 "eval_iters", "patience"),
    "finetune": ("task_seed", "seed", "dtype", "eval_max_new_tokens", "finetune", "ft_max_iters", "ft_batch_size",
                 "ft_lr", "ft_warmup_iters", "ft_eval_interval", "ft_grad_accum", "ft_group_by_length",
                 "ft_metric", "ft_pass_tasks", "ft_eval_tasks", "ft_neftune_alpha", "lora_r", "lora_alpha",
                 "lora_dropout", "lora_targets", "lora_dora", "loraplus_ratio", "top_k_layers", "weight_decay",
                 "beta1", "beta2", "grad_clip", "patience", "sft_source", "sft_mined_fraction"),
    "own_answers": ("task_seed", "seed", "dtype", "eval_max_new_tokens", "eval_batch_size", "own_answers_samples",
                    "own_answers_tasks", "own_answers_temperature", "own_answers_steps_only"),
    "eval": ("task_seed", "eval_max_new_tokens", "eval_tasks_per_split", "eval_batch_size",
             "eval_teacher_forcing", "eval_humaneval", "eval_humaneval_problems", "eval_humaneval_max_new_tokens",
             "eval_humaneval_samples", "eval_requests"),
}

# With a pretrained base (init set), the two stages that import it read only this much of the
# config, plus the base's files (pretrained.fingerprint). Later stages see the base through the
# files it left (tokenizer.json, pretrain/model.safetensors).
IMPORT_FIELDS = {"tokenizer": ("init",), "pretrain": ("init", "model")}

# Fields keyed otherwise: task_train_size and task_steps_weight through the task suite's fingerprint
# (stage_key), own_answers_from through its run's model files, and those no stage's result depends
# on (where files go, how often to log or checkpoint, the device).
# Every RunConfig field is in STAGE_FIELDS, IMPORT_FIELDS or here (tests/test_pipeline.py checks
# it), so a new field has to be placed.
UNKEYED_FIELDS = ("task_train_size", "task_steps_weight", "own_answers_from", "out_dir", "data_dir", "device",
                  "compile", "log_interval", "ckpt_interval", "peak_flops")

# The files a stage's result depends on: the outputs of the stages before it. Fine-tuning reads
# the own answers only while the own_answers stage is on (own_answers_samples > 0).
OWN_ANSWERS_FILE = "own_answers/answers.jsonl"
STAGE_INPUTS = {
    "tokenizer": (),
    "pretrain": (ckpt.TOKENIZER_FILE,),
    "own_answers": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE),
    "finetune": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE, OWN_ANSWERS_FILE),
    "eval": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE, "finetune/adapter_model.safetensors",
             "finetune/" + ckpt.MODEL_FILE),
}


def _field(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def stage_fields(cfg: RunConfig, stage: str) -> tuple[str, ...]:
    """The config fields a stage reads: STAGE_FIELDS, or IMPORT_FIELDS when it imports a base."""
    return IMPORT_FIELDS[stage] if cfg.init and stage in IMPORT_FIELDS else STAGE_FIELDS[stage]


def stage_key(cfg: RunConfig, stage: str) -> str:
    """Hash of what the stage reads: its config fields and the files of the stages before it."""
    config = to_dict(cfg)
    run_dir = Path(cfg.out_dir)
    inputs = {
        "config": {name: _field(config, name) for name in stage_fields(cfg, stage)},
        "files": {name: ckpt.file_sha256(run_dir / name) for name in STAGE_INPUTS[stage]
                  if (run_dir / name).is_file() and (cfg.own_answers_samples or name != OWN_ANSWERS_FILE)},
    }
    if cfg.init and stage in IMPORT_FIELDS:  # the base's own files (a missing one: the stage says so)
        try:
            inputs["base"] = fingerprint(resolve_init(cfg.init))
        except ConfigError:
            inputs["base"] = None
    # A stage that reads the task suite also keys on its content, so a change to the generator's
    # code (a new family, phrasing or weight) redoes it; pretraining reads it only through the mix.
    reads_suite = {"finetune": True, "eval": True, "own_answers": cfg.own_answers_samples > 0,
                   "pretrain": cfg.pretrain_task_mix > 0 and not cfg.init}
    if reads_suite.get(stage, False):
        inputs["suite"] = suite_fingerprint(cfg.task_seed, cfg.task_train_size, cfg.task_steps_weight)
    if stage == "own_answers" and cfg.own_answers_from:  # another run's fine-tuned model samples
        sampler = Path(cfg.own_answers_from).expanduser()
        inputs["sampler"] = {name: ckpt.file_sha256(sampler / name) for name in STAGE_INPUTS["eval"]
                             if (sampler / name).is_file()}
    if stage == "finetune" and cfg.sft_source:  # the mined files and the miner's code: a changed folder counts
        inputs["mined"] = source_fingerprint(cfg.sft_source)
    if stage == "eval" and cfg.eval_requests:  # the requests file is frozen, but a deliberate change counts
        inputs["requests"] = requests_fingerprint()
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()

# The eval stage saves each part (a model's tasks, its requests, its HumanEval) as it finishes, keyed
# by what that part reads: an interrupted evaluation resumes after its last finished part, and a new
# fine-tuning of the same base reuses the base's "before" results (half an hour for SmolLM2 on 2 cores).
EVAL_PART_INPUTS = {"pretrain": (ckpt.TOKENIZER_FILE, "pretrain/" + ckpt.MODEL_FILE),
                    "finetune": STAGE_INPUTS["eval"]}
# The eval fields a part's result does not depend on (each part's key has every other one), so that
# turning on the requests or HumanEval's samples for a finished run evaluates just those parts.
_HUMANEVAL_FIELDS = ("eval_humaneval", "eval_humaneval_problems", "eval_humaneval_max_new_tokens")
EVAL_PART_IGNORES = {
    "tasks": (*_HUMANEVAL_FIELDS, "eval_humaneval_samples", "eval_requests"),
    "requests": ("eval_tasks_per_split", *_HUMANEVAL_FIELDS, "eval_humaneval_samples", "eval_requests"),
    "humaneval": ("eval_tasks_per_split", "eval_teacher_forcing", "eval_humaneval_samples", "eval_requests"),
    "humaneval_sampled": ("eval_tasks_per_split", "eval_teacher_forcing", "eval_requests"),
}


def eval_part_key(cfg: RunConfig, model_stage: str, part: str) -> str:
    """Hash of what one part of the evaluation reads: its eval fields, the model's files, and the
    suite's held-out splits for the tasks part, the requests file for the requests part (a new
    held-out split re-evaluates the tasks, not HumanEval or the requests; a new training mix
    re-evaluates only the fine-tuned model, whose files change)."""
    config, run_dir = to_dict(cfg), Path(cfg.out_dir)
    fields = [name for name in STAGE_FIELDS["eval"] if name not in EVAL_PART_IGNORES[part]]
    inputs = {"part": part, "config": {name: _field(config, name) for name in fields},
              "files": {name: ckpt.file_sha256(run_dir / name) for name in EVAL_PART_INPUTS[model_stage]
                        if (run_dir / name).is_file()}}
    if part == "tasks":  # the held-out splits only: a run that trains on other tasks reuses the base's part
        inputs["suite"] = heldout_fingerprint(cfg.task_seed)
    if part == "requests":
        inputs["requests"] = requests_fingerprint()
    if part == "humaneval_sampled":  # the draws come from the run's seed (greedy parts draw nothing)
        inputs["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def saved_part(path: Path, key: str) -> Optional[dict]:
    """The report saved at path when it was made from the same inputs (its "inputs_key"), else None."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("inputs_key") == key else None


def read_stages(run_dir) -> dict:
    path = Path(run_dir) / STAGES_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}  # a damaged record only costs re-running stages

# What a finished stage leaves behind (any one of the names): deleting it makes the stage run again.
STAGE_OUTPUTS = {
    "tokenizer": (ckpt.TOKENIZER_FILE,),
    "pretrain": ("pretrain/" + ckpt.MODEL_FILE,),
    "own_answers": ("own_answers/summary.json",),  # none while it is off: it then runs, doing nothing
    "finetune": ("finetune/adapter_model.safetensors", "finetune/" + ckpt.MODEL_FILE),
    "eval": (f"{REPORT_NAME}.json",),
}


def is_done(cfg: RunConfig, stage: str) -> bool:
    run_dir = Path(cfg.out_dir)
    if not any((run_dir / name).is_file() for name in STAGE_OUTPUTS[stage]):
        return False
    return read_stages(run_dir).get(stage, {}).get("key") == stage_key(cfg, stage)


def mark_done(cfg: RunConfig, stage: str, seconds: float) -> None:
    stages = read_stages(cfg.out_dir)
    stages[stage] = {"key": stage_key(cfg, stage), "seconds": round(seconds, 2),
                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    ckpt.write_json_atomic(Path(cfg.out_dir) / STAGES_FILE, stages)
