"""The run's report: RUN_DIR/report.json and report.md, what the eval stage found, with every
stage's wall time, printed at the end of a run."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from minilm import checkpoint as ckpt
from minilm.config import RunConfig
from minilm.plot import plot_run
from minilm.stages.finetune import MINED_FILE
from minilm.stages.reuse import REPORT_NAME, read_stages


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def p_value(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def before_after_cells(before, after, paired=None) -> list[str]:
    """before [95% CI], after [95% CI], flips, p, verdict: the cells of one before/after row."""
    if paired is None:
        return [pct(before), pct(after), "-", "-", "-"]

    def with_interval(value, when):
        interval = paired.get(f"interval_{when}")
        return pct(value) + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")
    return [with_interval(before, "before"), with_interval(after, "after"),
            f"+{paired['gained']} / -{paired['lost']}", p_value(paired["p"]), paired["verdict"]]


def report_markdown(report: dict) -> str:
    if report.get("pretrained"):
        start = f"- pretrained: {report['pretrained']}"
    else:
        start = (f"- pretraining validation: {report['pretrain_val_bits_per_byte']:.3f} bits per byte "
                 "(held-out stdlib files)")
    lines = [f"# minilm run report: {report['run_dir']}", "",
             f"- device: {report['device']}, model: " + ", ".join(f"{k}={v}" for k, v in report["model_config"].items()),
             start,
             "- wall time: " + ", ".join(f"{s} {t:.0f} s" for s, t in report["stage_seconds"].items())
             + f" (total {sum(report['stage_seconds'].values()):.0f} s)",
             *([f"- own answers: {own['with_own_answer']} of {own['tasks']} sampled training tasks "
                f"({own['samples_per_task']} samples each from {own.get('sampler', 'the base')}) target a "
                "passing answer of the model's own"]
               if (own := report.get("own_answers")) else []),
             *([f"- fine-tuning data from --sft_source: {mined['summary']}"]
               if (mined := report.get("mined")) else []), "",
             "| split | kind | tasks | before fine-tuning [95% CI] | after fine-tuning [95% CI] | flips (+ / -) "
             "| p | verdict |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for split, kinds in report["results"].items():
        for kind, row in kinds.items():
            metric = "explain_f1" if kind == "explain" else "pass@1"
            name = "explain F1" if kind == "explain" else "pass@1"
            label = "generate + repair" if kind == "all" else kind
            rows.append([split, f"{label} ({name})", row["tasks"], *before_after_cells(
                row[metric + "_before"], row[metric + "_after"], row.get("paired"))])
    if report.get("requests"):
        row = report["requests"]
        rows.append(["requests", "generate, greedy (pass@1)", row["tasks"],
                     *before_after_cells(row["pass@1_before"], row["pass@1_after"], row["paired"])])
    if report.get("humaneval"):
        row = report["humaneval"]
        rows.append(["HumanEval", f"{row['format']} prompt, greedy (pass@1)", row["problems"],
                     *before_after_cells(row["pass@1_before"], row["pass@1_after"], row.get("paired"))])
        if row.get("sampled"):
            sampled = row["sampled"]
            rows.append(["HumanEval", f"{row['format']} prompt, pass@1 of {sampled['samples']} samples at "
                         f"T {sampled['temperature']:g}, top-p {sampled['top_p']:g}", row["problems"],
                         *before_after_cells(sampled["pass@1_before"], sampled["pass@1_after"], sampled["paired"])])
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    lines += ["", "95% CI: Wilson's interval. Flips: tasks that went fail -> pass (+) and pass -> fail (-), "
              "matched by task_id. p: McNemar's exact test on the flips (for sampled pass@1, the sign test "
              "on each problem's estimate: + rose, - fell). Verdict: better or worse at p < 0.05, else no "
              "detectable change (minilm/evaluation/statistics.py)."]
    return "\n".join(lines) + "\n"


def training_data_notes(cfg: RunConfig) -> dict:
    """What the stages before fine-tuning added to its data: how many tasks got an own answer
    (own_answers/summary.json) and what --sft_source mined (finetune/mined.json), when on."""
    run_dir, notes = Path(cfg.out_dir), {}
    own, mined = run_dir / "own_answers" / "summary.json", run_dir / "finetune" / MINED_FILE
    if cfg.own_answers_samples and own.is_file():
        notes["own_answers"] = {key: value for key, value in json.loads(own.read_text()).items()
                                if key != "by_family"}
    if cfg.sft_source and mined.is_file():
        notes["mined"] = json.loads(mined.read_text())
    return notes


def write_run_report(cfg: RunConfig, report: dict, eval_seconds: float, log=print) -> None:
    """report.json / report.md with every stage's wall time, then print the table and examples."""
    run_dir = Path(cfg.out_dir)
    seconds = {name: record["seconds"] for name, record in read_stages(run_dir).items()}
    stages = ("tokenizer", "pretrain", *(("own_answers",) if cfg.own_answers_samples else ()), "finetune")
    report["stage_seconds"] = {name: seconds[name] for name in stages if name in seconds} | {
        "eval": round(eval_seconds, 2)}
    report.update(training_data_notes(cfg))
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
