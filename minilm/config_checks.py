"""What each configuration field may take: its choices or its range, checked before a run writes anything.

minilm/config.py's dataclasses call check_values when they are built; a failure is one ConfigError
naming the --key, the values allowed and the value given.
"""
from __future__ import annotations

from dataclasses import fields


class ConfigError(ValueError):
    """A bad preset, key or value. Entry points print it on one line and exit with code 2."""


OPTIMIZERS = ("adamw", "muon")  # minilm/training/optim.py builds them
NORMS = ("layernorm", "rmsnorm")  # minilm/model/layers.py builds them
MLPS = ("gelu", "swiglu")
FINETUNE_MODES = ("lora", "full", "top_k", "lora+top_k")  # minilm/stages/finetune.py
# The values each string field takes (minilm builds or reads each one elsewhere; tests check the lists agree).
CHOICES = {
    "attention": ("auto", "sdpa", "reference"), "position": ("learned", "rope"), "norm": NORMS, "mlp": MLPS,
    "dtype": ("auto", "fast", "float32", "fp32", "bfloat16", "bf16"), "optimizer": OPTIMIZERS,
    "tokenizer_backend": ("minilm", "tokenizers"), "finetune": FINETUNE_MODES,
    "ft_metric": ("val_loss", "val_token_acc", "pass@1"),
}
SPECIAL_TOKEN_COUNT = 5  # minilm.data.sft.SPECIAL_TOKENS: a trained tokenizer needs 256 bytes and these
INF = float("inf")
# The range of every numeric field, [low, high] (an open end where a bound is excluded is written
# below as a strict check). Checked when a config is built, before a run writes anything.
RANGES = {
    "vocab_size": (1, 1 << 24), "block_size": (1, 1 << 17), "n_layer": (1, 1024), "n_head": (1, 1024),
    "n_embd": (1, 1 << 16), "mlp_hidden": (0, 1 << 18), "n_kv_head": (0, 1024), "rope_base": (1.0, INF),
    "seed": (0, 2**63 - 1), "task_seed": (0, 2**63 - 1), "corpus_max_bytes": (0, INF), "task_train_size": (1, 10**7),
    "task_steps_weight": (0.0, 1000.0), "pretrain_task_mix": (0.0, 1.0), "batch_size": (1, 1 << 16),
    "grad_accum": (1, 1 << 16),
    "max_iters": (1, 10**9), "min_lr": (0.0, 10.0), "warmup_iters": (0, 10**9), "weight_decay": (0.0, 10.0),
    "grad_clip": (0.0, INF), "eval_interval": (1, 10**9), "eval_iters": (0, 10**9), "log_interval": (1, 10**9),
    "ckpt_interval": (0, 10**9), "peak_flops": (0.0, INF), "ft_max_iters": (1, 10**9), "ft_batch_size": (1, 1 << 16),
    "ft_warmup_iters": (0, 10**9), "ft_eval_interval": (1, 10**9), "ft_grad_accum": (1, 1 << 16),
    "ft_group_by_length": (0, 1 << 16), "ft_neftune_alpha": (0.0, 1e4), "ft_pass_tasks": (0, 10**6),
    "ft_eval_tasks": (0, 10**7), "lora_r": (1, 1 << 16), "top_k_layers": (1, 1024), "patience": (1, 10**6),
    "eval_max_new_tokens": (1, 1 << 17), "eval_tasks_per_split": (1, 10**6), "eval_batch_size": (1, 1 << 16),
    "eval_humaneval_problems": (0, 164), "eval_humaneval_max_new_tokens": (1, 1 << 17),
    "eval_humaneval_samples": (0, 1000), "own_answers_samples": (0, 1000), "own_answers_tasks": (1, 10**7),
    "own_answers_temperature": (0.0, 10.0),
}
POSITIVE = ("norm_eps", "lr", "ft_lr", "lora_alpha", "loraplus_ratio")  # > 0 and finite
FRACTIONS = ("dropout", "lora_dropout", "beta1", "beta2", "sft_mined_fraction")  # in [0, 1)


def check_values(config) -> None:
    """Raise ConfigError naming the first field of `config` (a ModelConfig or RunConfig) whose value
    is outside its range or choices: --key, the allowed values, what was given."""
    for f in fields(config):
        name, value = f.name, getattr(config, f.name)
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(f"--{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value:  # NaN fails every comparison below, so name it
            raise ConfigError(f"--{name} must be a number, got nan")
        if name in RANGES and not RANGES[name][0] <= value <= RANGES[name][1]:
            low, high = (f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in RANGES[name])
            raise ConfigError(f"--{name} must be between {low} and {high}, got {value}")
        if name in POSITIVE and not 0 < value < INF:
            raise ConfigError(f"--{name} must be a positive number, got {value}")
        if name in FRACTIONS and not 0 <= value < 1:
            raise ConfigError(f"--{name} must be at least 0 and below 1, got {value}")
