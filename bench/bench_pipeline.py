"""Fine-tuning methods compared on one pretrained base, and does pretraining matter?

    python train.py --config small                # first: the run whose base every variant shares
    python bench/bench_pipeline.py --config small --run runs/small [--ft_max_iters N] [--eval_tasks_per_split N]

Variants, each fine-tuned by `train.py --stage finetune` in its own run directory under
RUN/bench/ (sharing RUN's tokenizer and pretrained weights), then evaluated on the same held-out
tasks as the pipeline's eval stage:
    lora         LoRA on the pretrained base (the pipeline's method)
    full         every weight trains
    top_k        only the top --top_k_layers blocks train (full weights)
    lora_random  LoRA on a randomly initialised base (same shapes): what pretraining buys

Printed per variant: trainable parameters, optimizer-state bytes (the saved AdamW state), final
checkpoint bytes, median step time, peak resident memory of the fine-tuning process, and greedy
pass@1 per held-out split. Then the pretraining throughput of RUN (tokens/s and MFU against the
measured matmul peak, from RUN/pretrain/metrics.jsonl). All variants run in this one invocation.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minilm import checkpoint as ckpt  # noqa: E402
from minilm.config import from_dict  # noqa: E402
from minilm.evaluate import evaluate_model  # noqa: E402
from minilm.model import GPT  # noqa: E402
from minilm.pipeline import EVAL_SPLITS, _by_split_and_kind, eval_tasks  # noqa: E402
from minilm.runtime import machine_summary  # noqa: E402

# name -> (--finetune mode, random base?, learning rate: None = the run's ft_lr). Full weights
# take a lower rate than adapters, as usual (1e-3 trained the small model well in our runs).
VARIANTS = {"lora": ("lora", False, None), "full": ("full", False, 1e-3), "top_k": ("top_k", False, 1e-3),
            "lora_random": ("lora", True, None)}


def prepare(run: Path, out: Path, random_base: bool, cfg) -> None:
    """A run directory holding RUN's tokenizer and base weights (or random ones of the same shapes)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "pretrain").mkdir(parents=True)
    shutil.copy(run / ckpt.TOKENIZER_FILE, out / ckpt.TOKENIZER_FILE)
    base = run / "pretrain" / ckpt.MODEL_FILE
    if not random_base:
        shutil.copy(base, out / "pretrain" / ckpt.MODEL_FILE)
        return
    _, metadata = ckpt.read_weights(base)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    extra = {k: v for k, v in metadata.items() if k == "tokenizer_sha256"}
    ckpt.save_weights(out / "pretrain" / ckpt.MODEL_FILE, ckpt.trainable_state(model, trainable_only=False),
                      cfg.model, extra)


def finetune(out: Path, mode: str, preset: str, overrides: list[str]) -> tuple[int, dict]:
    """Run the fine-tuning stage in a child process; return (peak RSS bytes, its trainable-param line)."""
    command = [sys.executable, str(ROOT / "train.py"), "--config", preset, "--out_dir", str(out),
               "--stage", "finetune", "--finetune", mode, "--ckpt_interval", "0", *overrides]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"error: fine-tuning {out.name} failed:\n{output[-2000:]}")
    return usage.ru_maxrss * 1024, output  # ru_maxrss is in KiB on Linux


def trainable_parameters(output: str) -> str:
    line = next((l for l in output.splitlines() if "trainable params:" in l), "")
    return line.split("trainable params:")[-1].strip()


def measured_sizes(out: Path) -> tuple[int, int, float]:
    """(optimizer-state bytes on disk, final checkpoint bytes, median ms per step)."""
    stage = out / "finetune"
    optimizer = sorted(stage.glob("checkpoints/step_*/optimizer.pt"))
    optimizer_bytes = optimizer[-1].stat().st_size if optimizer else 0
    finals = [stage / n for n in ("adapter_model.safetensors", "adapter_config.json", ckpt.MODEL_FILE)]
    checkpoint_bytes = sum(p.stat().st_size for p in finals if p.is_file())
    records = [json.loads(l) for l in (stage / "metrics.jsonl").read_text().splitlines()]
    step_ms = [r["step_ms"] for r in records if r["kind"] == "train" and "step_ms" in r]
    return optimizer_bytes, checkpoint_bytes, statistics.median(step_ms) if step_ms else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/small", help="a finished pipeline run (train.py --out_dir)")
    parser.add_argument("--config", default="small", help="the preset the run was trained with")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--ft_max_iters", type=int, default=0, help="0: the run's own setting")
    parser.add_argument("--eval_tasks_per_split", type=int, default=0, help="0: the run's own setting")
    args = parser.parse_args()
    print(machine_summary(), flush=True)

    run = Path(args.run)
    if not (run / "pretrain" / ckpt.MODEL_FILE).is_file():
        sys.exit(f"error: {run} has no pretrained model; run python train.py --out_dir {run} first")
    cfg = from_dict(json.loads((run / ckpt.CONFIG_FILE).read_text()))
    preset = args.config
    overrides = [f"--{k}={v}" for k, v in (("ft_max_iters", args.ft_max_iters),) if v]
    if args.eval_tasks_per_split:
        cfg = replace(cfg, eval_tasks_per_split=args.eval_tasks_per_split)
    overrides += [f"--{k}={getattr(cfg, k)}" for k in ("task_seed", "ft_batch_size", "lora_r",
                                                       "lora_alpha", "top_k_layers", "seed")]
    tasks = eval_tasks(cfg)
    rows = []
    for name in args.variants.split(","):
        mode, random_base, lr = VARIANTS[name]
        out = run / "bench" / name
        prepare(run, out, random_base, cfg)
        peak_rss, output = finetune(out, mode, preset, overrides + [f"--ft_lr={lr or cfg.ft_lr}"])
        optimizer_bytes, checkpoint_bytes, step_ms = measured_sizes(out)
        model, tok = ckpt.load_run(out, stage="finetune")
        records = evaluate_model(model, tok, tasks, cfg.eval_max_new_tokens, with_teacher_forcing=False)
        groups = _by_split_and_kind(records)
        passes = {split: groups.get((split, "all"), {}).get("pass@1") for split in EVAL_SPLITS}
        rows.append((name, lr or cfg.ft_lr, trainable_parameters(output), optimizer_bytes, checkpoint_bytes, step_ms,
                     peak_rss, passes))
        print(f"{name}: done", flush=True)

    print(f"\nbase {run} ({cfg.model.n_layer} layers x {cfg.model.n_embd}), {len(tasks)} held-out tasks, "
          f"greedy pass@1 on generate + repair tasks")
    header = ("variant", "lr", "trainable params", "optimizer state", "checkpoint", "step", "peak RSS",
              *EVAL_SPLITS)
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, lr, params, opt_b, ckpt_b, ms, rss, passes in rows:
        cells = [name, f"{lr:g}", params, f"{opt_b / 2**20:.2f} MiB", f"{ckpt_b / 2**20:.2f} MiB", f"{ms:.0f} ms",
                 f"{rss / 2**20:.0f} MiB", *(f"{100 * passes[s]:.1f}%" if passes[s] is not None else "-"
                                             for s in EVAL_SPLITS)]
        print("| " + " | ".join(cells) + " |")

    records = [json.loads(l) for l in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    if train:
        print(f"\npretraining throughput of {run}: median {statistics.median(r['tok_per_s'] for r in train):,.0f} "
              f"tokens/s, MFU {100 * statistics.median(r['mfu'] for r in train):.1f}% of the measured matmul peak")


if __name__ == "__main__":
    main()
