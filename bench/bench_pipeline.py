"""Fine-tuning methods compared on one base: a from-scratch run's, or an imported pretrained one.

    python train.py --config small                # first: the run whose base every variant shares
    python bench/bench_pipeline.py --config small --run runs/small [--ft_max_iters N] [--eval_tasks_per_split N]
    python train.py --config smollm2 --stage pretrain   # the imported SmolLM2 base (and its tokenizer)
    python bench/bench_pipeline.py --config smollm2 --run runs/smollm2 --humaneval_problems 164

Variants, each fine-tuned by `train.py --stage finetune` in its own run directory under
RUN/bench/ (sharing RUN's tokenizer and base weights), with RUN's config.json but for what the
variant changes, then evaluated on the same held-out tasks as the pipeline's eval stage:
    lora         LoRA as the run has it (the pipeline's method)
    lora_r8, lora_r16, lora_r64
                 LoRA of that rank on the run's targets, at the run's scale alpha / r (alpha moves
                 with r), so the rank is the only change
    dora         DoRA (minilm/model/lora.py) at rank 16, same targets and scale
    full         every weight trains, at --full_lr
    top_k        only the top --top_k_layers blocks train (full weights), at --full_lr
    lora_random  LoRA on a randomly initialised base (same shapes): what pretraining buys
The default set follows the base: lora, full, top_k, lora_random for a base pretrained here;
lora_r8, lora_r16, lora_r64, dora, full for an imported one (issue 20). --variants picks others.

Printed per variant: trainable parameters, optimizer-state bytes (the saved AdamW state), final
checkpoint bytes, median step time, peak resident memory of the fine-tuning process (and on a GPU
the allocator's peak), greedy pass@1 per held-out split, and with --humaneval_problems N greedy
pass@1 on the first N HumanEval problems (as the pipeline's eval stage runs it). Then, for a base
pretrained here, its pretraining throughput (tokens/s and MFU, from RUN/pretrain/metrics.jsonl).
Any other `--key value` overrides that RunConfig field for every variant (e.g. --ft_max_iters 50,
--eval_tasks_per_split 300, --ft_eval_tasks 16, --device cuda). All variants run in this invocation.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minilm import checkpoint as ckpt  # noqa: E402
from minilm.config import ConfigError, RunConfig, apply_overrides, from_dict, parse_overrides, to_dict  # noqa: E402
from minilm.evaluation.evaluate import evaluate_model  # noqa: E402
from minilm.model.gpt import GPT  # noqa: E402
from minilm.runtime import machine_summary, runtime_for  # noqa: E402
from minilm.stages.eval import (EVAL_SPLITS, _by_split_and_kind, eval_tasks, pretrained_description,  # noqa: E402
                                run_humaneval)


@dataclass(frozen=True)
class Variant:
    finetune: str  # the --finetune mode
    changes: dict = field(default_factory=dict)  # RunConfig fields it sets besides the run's own
    full_weights: bool = False  # full weights train: --full_lr, not the adapters' ft_lr
    random_base: bool = False  # a randomly initialised base of the same shapes


VARIANTS = {
    "lora": Variant("lora"),
    "lora_r8": Variant("lora", {"lora_r": 8}),
    "lora_r16": Variant("lora", {"lora_r": 16}),
    "lora_r64": Variant("lora", {"lora_r": 64}),
    "dora": Variant("lora", {"lora_r": 16, "lora_dora": True}),
    "full": Variant("full", full_weights=True),
    "top_k": Variant("top_k", full_weights=True),
    "lora_random": Variant("lora", random_base=True),
}
# By base: imported (pretrained elsewhere, e.g. SmolLM2) or pretrained by this run.
DEFAULT_VARIANTS = {"imported": "lora_r8,lora_r16,lora_r64,dora,full", "scratch": "lora,full,top_k,lora_random"}
# Full weights take a lower rate than adapters: 1e-3 trained the small model well in our runs; an
# instruction-tuned model's weights are usually fine-tuned at 1e-5..1e-4 (1e-3 would wreck them).
FULL_LR = {"imported": 5e-5, "scratch": 1e-3}


def variant_config(cfg: RunConfig, variant: Variant, out: Path, full_lr: float) -> RunConfig:
    """The run's config with what the variant changes, writing to out."""
    changes = dict(variant.changes)
    if "lora_r" in changes:  # keep the run's scale alpha / r
        changes["lora_alpha"] = cfg.lora_alpha / cfg.lora_r * changes["lora_r"]
    return replace(cfg, finetune=variant.finetune, out_dir=str(out), ckpt_interval=0,
                   ft_lr=full_lr if variant.full_weights else cfg.ft_lr, **changes)


def config_argv(cfg: RunConfig) -> list[str]:
    """Every field of cfg as `--key=value`, so train.py runs exactly this config whatever the preset."""
    values = {k: v for k, v in to_dict(cfg).items() if k != "model"} | to_dict(cfg)["model"]
    return [f"--{k}={v}" for k, v in values.items()]


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows it: a pretrained base is hundreds of MB per variant."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)


def prepare(run: Path, out: Path, random_base: bool, cfg: RunConfig) -> None:
    """A run directory holding RUN's tokenizer and base weights (or random ones of the same shapes)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "pretrain").mkdir(parents=True)
    shutil.copy(run / ckpt.TOKENIZER_FILE, out / ckpt.TOKENIZER_FILE)
    base = run / "pretrain" / ckpt.MODEL_FILE
    if not random_base:
        link_or_copy(base, out / "pretrain" / ckpt.MODEL_FILE)
        return
    _, metadata = ckpt.read_weights(base)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    extra = {k: v for k, v in metadata.items() if k == "tokenizer_sha256"}
    ckpt.save_weights(out / "pretrain" / ckpt.MODEL_FILE, ckpt.trainable_state(model, trainable_only=False),
                      cfg.model, extra)


def finetune(cfg: RunConfig, preset: str) -> int:
    """Run the fine-tuning stage of cfg in a child process; return its peak RSS in bytes."""
    command = [sys.executable, str(ROOT / "train.py"), "--config", preset, "--stage", "finetune", *config_argv(cfg)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"error: fine-tuning {cfg.out_dir} failed:\n{output[-2000:]}")
    return usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def measured(out: Path) -> dict:
    """What the fine-tuning stage's files say: trainable parameters and optimizer-state bytes (its
    last checkpoint), final checkpoint bytes, median ms per step, the GPU allocator's peak (or 0)."""
    stage = out / "finetune"
    last = ckpt.latest_checkpoint(stage / "checkpoints")
    finals = [stage / n for n in ("adapter_model.safetensors", "adapter_config.json", ckpt.MODEL_FILE)]
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    return {"trainable": ckpt.parameter_count(last / ckpt.WEIGHTS),
            "optimizer_bytes": (last / ckpt.OPTIMIZER).stat().st_size,
            "checkpoint_bytes": sum(p.stat().st_size for p in finals if p.is_file()),
            "step_ms": statistics.median(r["step_ms"] for r in train) if train else float("nan"),
            "cuda_peak_bytes": max((r.get("cuda_peak_bytes", 0) for r in train), default=0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/small", help="a finished pipeline run (train.py --out_dir)")
    parser.add_argument("--config", default="small", help="the preset the run was trained with")
    parser.add_argument("--variants", default="", help=f"comma-separated, of {', '.join(VARIANTS)}; "
                        "default: by the base (see above)")
    parser.add_argument("--full_lr", type=float, default=0.0, help="lr of full-weight variants; 0: by the base")
    parser.add_argument("--humaneval_problems", type=int, default=0,
                        help="also greedy HumanEval pass@1 on the first N problems (164: all); 0: none")
    args, rest = parser.parse_known_args()
    run = Path(args.run)
    base = run / "pretrain" / ckpt.MODEL_FILE
    if not base.is_file():
        sys.exit(f"error: {run} has no pretrained model; run python train.py --out_dir {run} first")
    try:  # any other --key value: a RunConfig field, for every variant
        cfg = apply_overrides(from_dict(json.loads((run / ckpt.CONFIG_FILE).read_text())), parse_overrides(rest)[0])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(machine_summary(), flush=True)
    imported = pretrained_description(base)
    kind = "imported" if imported else "scratch"
    names = (args.variants or DEFAULT_VARIANTS[kind]).split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    full_lr = args.full_lr or FULL_LR[kind]
    device, _ = runtime_for(cfg)
    tasks = eval_tasks(cfg)
    # Every variant is fine-tuned before any is evaluated here: a child's peak RSS (ru_maxrss) counts
    # this process's high-water mark at the fork (exec keeps it), so no model may be loaded yet.
    trained = []
    for name in names:
        variant = VARIANTS[name]
        vcfg = variant_config(cfg, variant, run / "bench" / name, full_lr)
        prepare(run, Path(vcfg.out_dir), variant.random_base, vcfg)
        trained.append((name, vcfg, finetune(vcfg, args.config)))
        print(f"{name}: fine-tuned", flush=True)
    rows = []
    for name, vcfg, peak_rss in trained:
        model, tok = ckpt.load_run(vcfg.out_dir, stage="finetune", device=device)
        records = evaluate_model(model, tok, tasks, vcfg.eval_max_new_tokens, with_teacher_forcing=False)
        groups = _by_split_and_kind(records)
        passes = {split: groups.get((split, "all"), {}).get("pass@1") for split in EVAL_SPLITS}
        if args.humaneval_problems:
            he_cfg = replace(vcfg, eval_humaneval_problems=args.humaneval_problems)
            report = run_humaneval(he_cfg, model, tok, "finetune", log=lambda *_: None)
            passes["HumanEval"] = report["summary"]["overall"].get("pass@1")
        rows.append((name, vcfg, measured(Path(vcfg.out_dir)), peak_rss, passes))
        print(f"{name}: evaluated", flush=True)

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    def mib(n):
        return f"{n / 2**20:.2f} MiB"

    print(f"\nbase {run}: {imported or 'pretrained here'} ({cfg.model.n_layer} layers x {cfg.model.n_embd}); "
          f"{cfg.ft_max_iters} fine-tuning steps of {cfg.ft_batch_size}; {len(tasks)} held-out tasks, greedy "
          f"pass@1 on generate + repair tasks" + (f"; HumanEval: first {args.humaneval_problems} problems, "
                                                  "greedy" if args.humaneval_problems else ""))
    splits = [*EVAL_SPLITS, *(["HumanEval"] if args.humaneval_problems else [])]
    header = ("variant", "lr", "trainable params", "optimizer state", "checkpoint", "step", "peak RSS", "peak GPU",
              *splits)
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, vcfg, m, rss, passes in rows:
        cells = [name, f"{vcfg.ft_lr:g}", f"{m['trainable']:,}", mib(m["optimizer_bytes"]), mib(m["checkpoint_bytes"]),
                 f"{m['step_ms']:.0f} ms", f"{rss / 2**20:.0f} MiB",
                 f"{m['cuda_peak_bytes'] / 2**20:.0f} MiB" if m["cuda_peak_bytes"] else "-",
                 *(pct(passes[s]) for s in splits)]
        print("| " + " | ".join(cells) + " |")

    metrics = run / "pretrain" / "metrics.jsonl"  # none for an imported base
    train = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"] \
        if metrics.is_file() else []
    if train:
        print(f"\npretraining throughput of {run}: median {statistics.median(r['tok_per_s'] for r in train):,.0f} "
              f"tokens/s, MFU {100 * statistics.median(r['mfu'] for r in train):.1f}% of the measured matmul peak")


if __name__ == "__main__":
    main()
