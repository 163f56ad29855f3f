"""Finished runs side by side, e.g. `small` (from scratch) against `smollm2` (pretrained + LoRA).

    python bench/compare_runs.py runs/small runs/smollm2

Reads what each run left (nothing is trained or evaluated here): report.json (pass@1 per held-out
split and on HumanEval, before -> after fine-tuning; the base), stages.json (the wall time of each
stage), the fine-tuning stage's last checkpoint (the config it ran with, its step, and its weights
file, which holds exactly the trainable parameters; config.json when there is none) and the base's
parameter count (pretrain/model.safetensors). Prints one table, a column per run.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minilm import checkpoint as ckpt  # noqa: E402
from minilm.stages.eval import EVAL_SPLITS  # noqa: E402
from minilm.stages.reuse import read_stages

STAGES = ("tokenizer", "pretrain", "finetune", "eval")


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def before_after(row: dict, metric: str = "pass@1") -> str:
    return f"{pct(row.get(metric + '_before'))} -> {pct(row.get(metric + '_after'))}"


def seconds(value) -> str:
    return "-" if value is None else f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"


def fine_tuning(cfg: dict) -> str:
    """The method in a few words: LoRA's rank, scale and targets, or which weights train."""
    steps = f"at most {cfg['ft_max_iters']} steps of {cfg['ft_batch_size']}, lr {cfg['ft_lr']:g}"
    if "lora" not in cfg["finetune"]:
        extra = f" (top {cfg['top_k_layers']} blocks)" if cfg["finetune"] == "top_k" else ""
        return f"{cfg['finetune']}{extra}, {steps}"
    method = "DoRA" if cfg.get("lora_dora") else "LoRA"
    return f"{method} r={cfg['lora_r']} alpha={cfg['lora_alpha']:g} on {cfg['lora_targets']}; {steps}"


def column(run: Path) -> dict[str, str]:
    """{row name: cell} for one run."""
    report = json.loads((run / "report.json").read_text())
    model = report["model_config"]
    base = ckpt.parameter_count(run / "pretrain" / ckpt.MODEL_FILE)
    last = ckpt.latest_checkpoint(run / "finetune" / "checkpoints")
    state = json.loads((last / ckpt.STATE).read_text()) if last else {}
    # the config fine-tuning ran with (config.json is the latest invocation's, maybe a later stage's)
    cfg = state.get("config") or json.loads((run / ckpt.CONFIG_FILE).read_text())
    trainable = ckpt.parameter_count(last / ckpt.WEIGHTS) if last else None
    steps_run = state.get("step")
    cells = {
        "base": report.get("pretrained") or f"pretrained here, {report['pretrain_val_bits_per_byte']:.3f} bits/byte",
        "model": f"{model['n_layer']} x {model['n_embd']}, {base / 1e6:.1f}M parameters",
        "fine-tuning": fine_tuning(cfg),
        "fine-tuning steps run": "-" if steps_run is None else str(steps_run),
        "trainable parameters": "-" if trainable is None else f"{trainable:,} ({100 * trainable / base:.2f}%)",
    }
    for split in EVAL_SPLITS:
        row = report["results"].get(split, {}).get("all")
        cells[f"{split} pass@1"] = f"{before_after(row)} ({row['tasks']} tasks)" if row else "-"
    he = report.get("humaneval")
    cells["HumanEval pass@1"] = f"{before_after(he)} ({he['problems']} problems)" if he else "-"
    stages = read_stages(run)
    for stage in STAGES:
        cells[f"wall time: {stage}"] = seconds(stages.get(stage, {}).get("seconds"))
    cells["wall time: total"] = seconds(sum(stages.get(s, {}).get("seconds", 0) for s in STAGES))
    cells["device"] = report["device"]
    return cells


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories (train.py --out_dir)")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "report.json").is_file():
            sys.exit(f"error: {run} has no report.json; finish it with python train.py --out_dir {run}")
    columns = [column(run) for run in runs]
    print("pass@1: greedy, generate + repair tasks of each held-out split, before -> after fine-tuning\n")
    print("| | " + " | ".join(run.name for run in runs) + " |\n|---|" + "---|" * len(runs))
    for name in columns[0]:
        print(f"| {name} | " + " | ".join(c[name].replace("|", "\\|") for c in columns) + " |")  # a regex's |


if __name__ == "__main__":
    main()
