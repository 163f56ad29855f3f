"""The run's report: RUN_DIR/report.json and report.md, what the eval stage found, with every
stage's wall time, printed at the end of a run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from minilm import checkpoint as ckpt
from minilm.config import RunConfig
from minilm.plot import plot_run
from minilm.stages.reuse import REPORT_NAME, read_stages


def report_markdown(report: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    if report.get("pretrained"):
        start = f"- pretrained: {report['pretrained']}"
    else:
        start = (f"- pretraining validation: {report['pretrain_val_bits_per_byte']:.3f} bits per byte "
                 "(held-out stdlib files)")
    lines = [f"# minilm run report: {report['run_dir']}", "",
             f"- device: {report['device']}, model: " + ", ".join(f"{k}={v}" for k, v in report["model_config"].items()),
             start,
             "- wall time: " + ", ".join(f"{s} {t:.0f} s" for s, t in report["stage_seconds"].items())
             + f" (total {sum(report['stage_seconds'].values()):.0f} s)", "",
             "| split | kind | tasks | before fine-tuning | after fine-tuning |", "|---|---|---|---|---|"]
    for split, kinds in report["results"].items():
        for kind, row in kinds.items():
            metric = "explain_f1" if kind == "explain" else "pass@1"
            name = "explain F1" if kind == "explain" else "pass@1"
            label = "generate + repair" if kind == "all" else kind
            lines.append(f"| {split} | {label} ({name}) | {row['tasks']} | {pct(row[metric + '_before'])} | "
                         f"{pct(row[metric + '_after'])} |")
    if report.get("humaneval"):
        row = report["humaneval"]
        lines.append(f"| HumanEval | {row['format']} prompt, greedy (pass@1) | {row['problems']} | "
                     f"{pct(row['pass@1_before'])} | {pct(row['pass@1_after'])} |")
    return "\n".join(lines) + "\n"


def write_run_report(cfg: RunConfig, report: dict, eval_seconds: float, log=print) -> None:
    """report.json / report.md with every stage's wall time, then print the table and examples."""
    run_dir = Path(cfg.out_dir)
    seconds = {name: record["seconds"] for name, record in read_stages(run_dir).items()}
    report["stage_seconds"] = {name: seconds[name] for name in ("tokenizer", "pretrain", "finetune")
                               if name in seconds} | {"eval": round(eval_seconds, 2)}
    ckpt.write_json_atomic(run_dir / f"{REPORT_NAME}.json", report)
    ckpt.write_text_atomic(run_dir / f"{REPORT_NAME}.md", report_markdown(report))
    log("")
    log(report_markdown(report))
    for example in report["examples"]:
        log(f"--- {example['split']} task ({example['status']}): {example['text']}")
        log(example["code"])
    log("")
    curves = _plot_curves(run_dir)
    log(f"written: {run_dir}/report.md, report.json, eval/ (per-task records), tokenizer.json, "
        f"pretrain/model.safetensors, finetune/ (adapter or weights), */metrics.jsonl, {curves}")


def _plot_curves(run_dir: Path) -> str:
    """RUN_DIR/curves.png when matplotlib (the optional extra) is installed; else how to get it."""
    if importlib.util.find_spec("matplotlib") is None:
        return 'no curves.png (pip install "minilm[plot]", then python -m minilm.plot RUN_DIR)'
    return f"loss curves in {plot_run(run_dir)}"
