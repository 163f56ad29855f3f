"""Finished runs side by side, e.g. `small` (from scratch) against `smollm2` (pretrained + LoRA).

    python bench/compare_runs.py runs/small runs/smollm2

Reads what each run left (nothing is trained or evaluated here): report.json (pass@1 per held-out
split, on the requests and on HumanEval, before -> after fine-tuning, each with its 95% Wilson
intervals and verdict; the base), stages.json (the wall time of each stage), the fine-tuning
stage's last checkpoint (the config it ran with, its step, and its weights file, which holds
exactly the trainable parameters; config.json when there is none) and the base's parameter count
(pretrain/model.safetensors). Prints one table, a column per run.

Each run after the first is also compared with the first, after fine-tuning, task by task on the
tasks both evaluated (eval/*.json records matched by task_id): the flips, McNemar's exact p and a
verdict (minilm/evaluation/statistics.py), e.g. whether smollm2 is better than small on test_seen.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minilm import checkpoint as ckpt  # noqa: E402
from minilm.evaluation.statistics import outcomes, paired_comparison  # noqa: E402
from minilm.stages.eval import EVAL_SPLITS, REQUESTS  # noqa: E402
from minilm.stages.reuse import read_stages  # noqa: E402

STAGES = ("tokenizer", "pretrain", "own_answers", "finetune", "eval")


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def before_after(row: dict, metric: str = "pass@1") -> str:
    """"before [lo, hi] -> after [lo, hi], verdict (p)" (the intervals and verdict where the report has them)."""
    paired = row.get("paired") or {}

    def rate(when):
        interval = paired.get(f"interval_{when}")
        return pct(row.get(f"{metric}_{when}")) + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
                                                   if interval else "")
    verdict = f", {paired['verdict']} (+{paired['gained']} / -{paired['lost']}, p {paired['p']:.2g})" if paired else ""
    return f"{rate('before')} -> {rate('after')}{verdict}"


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
    requests = report.get("requests")
    cells["requests pass@1"] = f"{before_after(requests)} ({requests['tasks']} tasks)" if requests else "-"
    he = report.get("humaneval")
    cells["HumanEval pass@1"] = f"{before_after(he)} ({he['problems']} problems)" if he else "-"
    sampled = (he or {}).get("sampled")
    cells["HumanEval pass@1, sampled"] = (f"{before_after(sampled)} ({sampled['samples']} samples at "
                                          f"T {sampled['temperature']:g})" if sampled else "-")
    stages = read_stages(run)
    for stage in STAGES:
        cells[f"wall time: {stage}"] = seconds(stages.get(stage, {}).get("seconds"))
    cells["wall time: total"] = seconds(sum(stages.get(s, {}).get("seconds", 0) for s in STAGES))
    cells["device"] = report["device"]
    return cells


# The rows compared run against run, after fine-tuning: (row name, eval/ file, split or None for all).
PAIRED_ROWS = [*((split, "finetune", split) for split in EVAL_SPLITS), (REQUESTS, f"{REQUESTS}_finetune", None),
               ("HumanEval", "humaneval_finetune", None)]


def after_outcomes(run: Path, file: str, split) -> dict:
    """{task_id: (kind, family, 0 or 1)} of a run's code tasks after fine-tuning, from its eval/ records."""
    path = run / "eval" / f"{file}.json"
    if not path.is_file():
        return {}
    records = [r for r in json.loads(path.read_text())["records"] if split is None or r["split"] == split]
    passed = outcomes(records)
    return {r["task_id"]: (r["kind"], r["family"], passed[r["task_id"]]) for r in records if r["task_id"] in passed}


def against(first: Path, run: Path, file: str, split) -> str:
    """The run after fine-tuning against the first run after fine-tuning, on the tasks both scored."""
    a, b = after_outcomes(first, file, split), after_outcomes(run, file, split)
    shared = sorted(a.keys() & b.keys())
    if not shared or any(a[t][:2] != b[t][:2] for t in shared):
        return "-"  # nothing in common, or other tasks under the same ids (another task_seed or suite)
    row = paired_comparison({t: a[t][2] for t in shared}, {t: b[t][2] for t in shared})
    return (f"{pct(row['mean_before'])} -> {pct(row['mean_after'])}, {row['verdict']} "
            f"(+{row['gained']} / -{row['lost']}, p {row['p']:.2g}; {len(shared)} tasks)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories (train.py --out_dir)")
    args = parser.parse_args()
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "report.json").is_file():
            sys.exit(f"error: {run} has no report.json; finish it with python train.py --out_dir {run}")
    columns = [column(run) for run in runs]
    for name, file, split in PAIRED_ROWS:
        for run, cells in zip(runs, columns):
            cells[f"{name}: vs {runs[0].name}, after"] = "-" if run == runs[0] else against(runs[0], run, file, split)
    print("pass@1: greedy, generate + repair tasks of each held-out split, before -> after fine-tuning, "
          "[95% Wilson interval], verdict (+ tasks gained / - lost, McNemar's exact p)\n")
    print("| | " + " | ".join(run.name for run in runs) + " |\n|---|" + "---|" * len(runs))
    for name in columns[0]:
        print(f"| {name} | " + " | ".join(c[name].replace("|", "\\|") for c in columns) + " |")  # a regex's |


if __name__ == "__main__":
    main()
