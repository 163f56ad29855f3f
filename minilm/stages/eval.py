"""The eval stage: the model before fine-tuning (the pretrained weights) and after it, judged by
running the code they write.

On the held-out splits of the task suite (minilm/evaluation/evaluate.py) and, with eval_humaneval,
on HumanEval (minilm/evaluation/humaneval.py, greedy pass@1). Each part is saved as it finishes
under RUN_DIR/eval/ with the key of what it read (minilm/stages/reuse.py), so an interrupted
evaluation resumes. The report (minilm/stages/report.py) gathers pass@1 per split and kind before
and after, HumanEval before and after, and the pretraining validation bits per byte (or the base
the run starts from).
"""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from minilm import checkpoint as ckpt
from minilm.config import RunConfig, to_dict
from minilm.data.tasks import generate_suite
from minilm.evaluation import humaneval as he
from minilm.evaluation.evaluate import build_report, evaluate_model
from minilm.evaluation.metrics import summarize_group, write_comparison, write_report
from minilm.generation.completions import progress_logger
from minilm.runtime import runtime_for
from minilm.stages.pretrain import pretrain_bits_per_byte
from minilm.stages.reuse import eval_part_key, saved_part

EVAL_SPLITS = ("test_seen", "test_phrasing", "test_compose")


def eval_tasks(cfg: RunConfig) -> list[dict]:
    """The first eval_tasks_per_split tasks of each held-out split (all kinds)."""
    n = cfg.eval_tasks_per_split
    suite = generate_suite(seed=cfg.task_seed, n_train=0, n_valid=0, n_test=max(n, 1))  # test splits only
    return [task for split in EVAL_SPLITS for task in suite[split][:n]]


def run_eval(cfg: RunConfig, log=print, reuse: bool = True) -> dict:
    """Evaluate before and after fine-tuning; write eval/ reports, report.json and report.md.

    A part saved by an earlier evaluation of the same model with the same settings is reused
    unless reuse is False (see eval_part_key)."""
    device, _ = runtime_for(cfg)
    run_dir = Path(cfg.out_dir)
    tasks = eval_tasks(cfg)
    log(f"eval: {len(tasks)} held-out tasks ({cfg.eval_tasks_per_split} per split of "
        f"{', '.join(EVAL_SPLITS)}), greedy decoding, generated code run in a sandbox")
    pretrained = pretrained_description(run_dir / "pretrain" / ckpt.MODEL_FILE)
    reports, groups, humaneval = {}, {}, {}
    for stage in ("pretrain", "finetune"):
        loaded = []  # the model, once a part needs it

        def model_and_tokenizer():
            if not loaded:
                loaded.extend(ckpt.load_run(run_dir, stage=stage, device=device))
            return loaded

        if stage == "pretrain" and pretrained:
            log(f"eval: pretrained: {pretrained}")
        elif stage == "pretrain":
            bpb = pretrain_bits_per_byte(cfg, *model_and_tokenizer(), log)
            log(f"eval: pretrained model, validation {bpb:.3f} bits per byte")
        key = eval_part_key(cfg, stage, "tasks")
        reports[stage] = saved_part(run_dir / "eval" / f"{stage}.json", key) if reuse else None
        if reports[stage] is not None:
            log(f"eval: {stage}: reusing eval/{stage}.json (same model and settings; --force redoes it)")
        else:
            records = evaluate_model(*model_and_tokenizer(), tasks, cfg.eval_max_new_tokens,
                                     batch_size=cfg.eval_batch_size, with_teacher_forcing=cfg.eval_teacher_forcing,
                                     progress=progress_logger(f"eval: {stage}", log))
            reports[stage] = build_report(records, label=stage, max_new_tokens=cfg.eval_max_new_tokens)
            write_report({**reports[stage], "inputs_key": key}, run_dir / "eval", stage)
        groups[stage] = _by_split_and_kind(reports[stage]["records"])
        log(f"eval: {stage} pass@1 {reports[stage]['summary']['overall'].get('pass@1', 0.0):.3f}")
        if cfg.eval_humaneval:
            key = eval_part_key(cfg, stage, "humaneval")
            humaneval[stage] = saved_part(run_dir / "eval" / f"humaneval_{stage}.json", key) if reuse else None
            if humaneval[stage] is not None:
                log(f"eval: {stage}: reusing eval/humaneval_{stage}.json (--force redoes it)")
            else:
                humaneval[stage] = run_humaneval(cfg, *model_and_tokenizer(), stage, log, inputs_key=key)
    write_comparison(reports["pretrain"], reports["finetune"], run_dir / "eval",
                     labels=("before fine-tuning", "after fine-tuning"))
    report = {
        "run_dir": str(run_dir), "device": str(device), "model_config": to_dict(cfg)["model"],
        **({"pretrained": pretrained} if pretrained else {"pretrain_val_bits_per_byte": bpb}),
        "isolation": reports["finetune"]["meta"]["isolation"],
        "results": split_kind_table(groups["pretrain"], groups["finetune"], tasks),
        "examples": _examples(tasks, reports["finetune"]["records"]),
    }
    if humaneval:
        meta = humaneval["finetune"]["meta"]
        report["humaneval"] = {"problems": meta["tasks"], "format": meta["format"],
                               "max_new_tokens": meta["max_new_tokens"],
                               **{f"pass@1_{when}": humaneval[stage]["summary"]["overall"].get("pass@1")
                                  for when, stage in (("before", "pretrain"), ("after", "finetune"))}}
    return report


def run_humaneval(cfg: RunConfig, model, tok, stage: str, log=print, inputs_key: str = "") -> dict:
    """Greedy pass@1 on HumanEval (the first eval_humaneval_problems, or all 164), in the chat format
    for a ChatML tokenizer and as a plain code prefix otherwise; eval/humaneval_{stage}.json and .md."""
    problems = he.load_problems()
    problems = problems[:cfg.eval_humaneval_problems] if cfg.eval_humaneval_problems else problems
    prompt_format, render_chat = he.prompt_format(tok)
    records = he.evaluate_humaneval(model, tok, prompt_format, render_chat=render_chat, problems=problems,
                                    max_new_tokens=cfg.eval_humaneval_max_new_tokens,
                                    batch_size=cfg.eval_batch_size,
                                    progress=progress_logger(f"eval: {stage} HumanEval", log))
    report = build_report(records, label=stage, benchmark="humaneval", format=prompt_format,
                          max_new_tokens=cfg.eval_humaneval_max_new_tokens)
    write_report({**report, "inputs_key": inputs_key} if inputs_key else report, Path(cfg.out_dir) / "eval",
                 "humaneval_" + stage)
    log(f"eval: {stage} HumanEval pass@1 {report['summary']['overall'].get('pass@1', 0.0):.3f} "
        f"({len(problems)} problems, {prompt_format} prompt)")
    return report


def pretrained_description(weights) -> str:
    """What a run's pretrained weights are when they were imported, not trained (minilm.stages.training.
    import_base records it in the file's metadata, e.g. "SmolLM2-135M-Instruct, Q4_1 GGUF,
    dequantised to fp32"); "" for weights pretrained here."""
    with safe_open(str(weights), framework="pt") as f:
        return (f.metadata() or {}).get("pretrained", "")


def split_kind_table(summary_before: dict, summary_after: dict, tasks: list[dict]) -> dict:
    """{split: {kind: {"tasks", "pass@1"/"explain_f1" before and after}}} from two summaries' records."""
    table = {}
    for split in EVAL_SPLITS:
        table[split] = {}
        for kind in ("all", "generate", "repair", "explain"):
            before = summary_before.get((split, kind), {})
            after = summary_after.get((split, kind))
            if after is None:
                continue
            metric = "explain_f1" if kind == "explain" else "pass@1"
            counted = after["explain_tasks"] if kind == "explain" else after["code_tasks"]
            table[split][kind] = {"tasks": counted, f"{metric}_before": before.get(metric),
                                  f"{metric}_after": after.get(metric)}
    return table


def _by_split_and_kind(records: list[dict]) -> dict:
    groups = {}
    for split in EVAL_SPLITS:
        in_split = [r for r in records if r["split"] == split]
        if in_split:
            groups[(split, "all")] = summarize_group(in_split)
        for kind in ("generate", "repair", "explain"):
            chosen = [r for r in in_split if r["kind"] == kind]
            if chosen:
                groups[(split, kind)] = summarize_group(chosen)
    return groups


def _examples(tasks: list[dict], records: list[dict], n: int = 3) -> list[dict]:
    """One generated program per held-out split (the first code task of each), with its verdict."""
    examples = []
    for split in EVAL_SPLITS:
        for task, record in zip(tasks, records):
            if task["split"] == split and record["kind"] != "explain" and record["completions"]:
                examples.append({"split": split, "text": task["text"], "code": record["completions"][0],
                                 "status": record["statuses"][0]})
                break
    return examples[:n]
