"""The eval stage: the model before fine-tuning (the pretrained weights) and after it, judged by
running the code they write.

Its parts, each evaluated for both models and saved as it finishes under RUN_DIR/eval/ with the key
of what it read (minilm/stages/reuse.py), so that an interrupted evaluation resumes:

    part               what                                                    file (stage: pretrain, finetune)
    tasks              the task suite's held-out splits (evaluation/evaluate.py)    {stage}.json
    requests           the 168 hand-written requests (data/requests.py)            requests_{stage}.json
    humaneval          HumanEval, greedy (evaluation/humaneval.py)                 humaneval_{stage}.json
    humaneval_sampled  HumanEval, pass@1 from eval_humaneval_samples per problem   humaneval_sampled_{stage}.json

The report (minilm/stages/report.py) gathers pass@1 per split and kind, on the requests and on
HumanEval, before and after, each pass@1 row with its paired statistics (minilm/evaluation/
statistics.py: Wilson intervals, the tasks that flipped each way, McNemar's exact p, a verdict),
and the pretraining validation bits per byte (or the base the run starts from).
"""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from minilm import cache
from minilm import checkpoint as ckpt
from minilm.config import RunConfig, to_dict
from minilm.data.requests import SPLIT as REQUESTS, load_requests
from minilm.data.tasks import generate_suite
from minilm.evaluation import humaneval as he
from minilm.evaluation.evaluate import build_report, evaluate_model
from minilm.evaluation.metrics import summarize_group, write_comparison, write_report
from minilm.evaluation.statistics import outcomes, paired_comparison
from minilm.generation.completions import progress_logger
from minilm.runtime import runtime_for
from minilm.stages.pretrain import pretrain_bits_per_byte
from minilm.stages.reuse import eval_part_key, saved_part

# test_steps: the multi-step families (minilm/data/tasks/steps.py), scored whether or not training drew them
EVAL_SPLITS = ("test_seen", "test_phrasing", "test_compose", "test_steps")
MODELS = ("pretrain", "finetune")  # before and after fine-tuning


def eval_tasks(cfg: RunConfig) -> list[dict]:
    """The first eval_tasks_per_split tasks of each held-out split (all kinds)."""
    n = cfg.eval_tasks_per_split
    suite = generate_suite(seed=cfg.task_seed, n_train=0, n_valid=0, n_test=max(n, 1))  # test splits only
    return [task for split in EVAL_SPLITS for task in suite[split][:n]]


def request_tasks(cfg: RunConfig) -> list[dict]:
    """The first eval_tasks_per_split requests (all 168 in the presets that score 300 per split),
    as tasks; the category stands in for the family, so a part's report (and bench/failures.py)
    breaks them down by it."""
    return [{**request, "family": request["category"]} for request in load_requests()[:cfg.eval_tasks_per_split]]


def run_eval(cfg: RunConfig, log=print, reuse: bool = True) -> dict:
    """Evaluate before and after fine-tuning; write eval/ reports, report.json and report.md.

    A part saved by an earlier evaluation of the same model with the same settings is reused
    unless reuse is False (see eval_part_key)."""
    device, dtype = runtime_for(cfg)
    run_dir = Path(cfg.out_dir)
    tasks = eval_tasks(cfg)
    requests = request_tasks(cfg) if cfg.eval_requests else []
    log(f"eval: {len(tasks)} held-out tasks ({cfg.eval_tasks_per_split} per split of {', '.join(EVAL_SPLITS)})"
        + (f" and {len(requests)} requests" if requests else "") + ", greedy decoding, generated code run in a sandbox")
    pretrained = pretrained_description(run_dir / "pretrain" / ckpt.MODEL_FILE)
    parts = {}  # {(part, model): report}
    for stage in MODELS:
        loaded = []  # the model, once a part needs it

        def model_and_tokenizer():
            if not loaded:
                loaded.extend(ckpt.load_run(run_dir, stage=stage, device=device))
            return loaded

        def part(name: str, evaluate) -> dict:
            """The part's report: saved by an earlier evaluation from the same inputs, else evaluated and saved."""
            file = stage if name == "tasks" else f"{name}_{stage}"
            key = eval_part_key(cfg, stage, name)
            report = saved_part(run_dir / "eval" / f"{file}.json", key) if reuse else None
            # the same part, evaluated by another run on this machine with the same device and dtype
            shared_key = f"{key} {device} {dtype}"
            shared = cache.evaluation_path(shared_key)
            if report is not None:
                log(f"eval: {stage}: reusing eval/{file}.json (same model and settings; --force redoes it)")
            elif reuse and shared is not None and (report := saved_part(shared, key)) is not None:
                log(f"eval: {stage}: reusing {file} from {shared.parent} (the same model, settings and code "
                    "evaluated by another run on this machine; --force redoes it)")
                write_report(report, run_dir / "eval", file)
            else:
                report = {**evaluate(*model_and_tokenizer()), "inputs_key": key}
                write_report(report, run_dir / "eval", file)
                cache.store_evaluation(shared_key, report)
            parts[name, stage] = report
            return report

        if stage == "pretrain" and pretrained:
            log(f"eval: pretrained: {pretrained}")
        elif stage == "pretrain":
            bpb = pretrain_bits_per_byte(cfg, *model_and_tokenizer(), log)
            log(f"eval: pretrained model, validation {bpb:.3f} bits per byte")
        report = part("tasks", lambda model, tok: run_tasks(cfg, model, tok, tasks, stage, log))
        log(f"eval: {stage} pass@1 {report['summary']['overall'].get('pass@1', 0.0):.3f}")
        if requests:
            report = part("requests", lambda model, tok: run_tasks(cfg, model, tok, requests, stage, log,
                                                                   " requests"))
            log(f"eval: {stage} requests pass@1 {report['summary']['overall'].get('pass@1', 0.0):.3f} "
                f"({len(requests)} requests)")
        if cfg.eval_humaneval:
            part("humaneval", lambda model, tok: run_humaneval(cfg, model, tok, stage, log))
            if cfg.eval_humaneval_samples > 1:
                part("humaneval_sampled", lambda model, tok: run_humaneval(cfg, model, tok, stage, log,
                                                                           samples=cfg.eval_humaneval_samples))
    before, after = parts["tasks", "pretrain"], parts["tasks", "finetune"]
    write_comparison(before, after, run_dir / "eval", labels=("before fine-tuning", "after fine-tuning"))
    report = {
        "run_dir": str(run_dir), "device": str(device), "model_config": to_dict(cfg)["model"],
        **({"pretrained": pretrained} if pretrained else {"pretrain_val_bits_per_byte": bpb}),
        "isolation": after["meta"]["isolation"],
        "results": split_kind_table(before["records"], after["records"]),
        "examples": _examples(tasks, after["records"], EVAL_SPLITS),
    }
    if requests:
        report["requests"] = {"tasks": len(requests), **before_after(parts, "requests")}
        report["examples"] += _examples(requests, parts["requests", "finetune"]["records"], (REQUESTS,))
    if cfg.eval_humaneval:
        meta = parts["humaneval", "finetune"]["meta"]
        report["humaneval"] = {"problems": meta["tasks"], "format": meta["format"],
                               "max_new_tokens": meta["max_new_tokens"], **before_after(parts, "humaneval")}
        if cfg.eval_humaneval_samples > 1:
            meta = parts["humaneval_sampled", "finetune"]["meta"]
            report["humaneval"]["sampled"] = {"samples": meta["samples"], "temperature": meta["temperature"],
                                              "top_p": meta["top_p"], **before_after(parts, "humaneval_sampled")}
    return report


def run_tasks(cfg: RunConfig, model, tok, tasks: list[dict], stage: str, log=print, what: str = "") -> dict:
    """Greedy answers to tasks in the fine-tuning format, run against their tests: a report. `what`
    names the tasks in the progress lines."""
    records = evaluate_model(model, tok, tasks, cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                             with_teacher_forcing=cfg.eval_teacher_forcing,
                             progress=progress_logger(f"eval: {stage}{what}", log))
    return build_report(records, label=stage, max_new_tokens=cfg.eval_max_new_tokens)


def run_humaneval(cfg: RunConfig, model, tok, stage: str, log=print, samples: int = 1) -> dict:
    """pass@1 on HumanEval (the first eval_humaneval_problems, or all 164), in the chat format for a
    ChatML tokenizer and as a plain code prefix otherwise: greedy, or, with samples > 1, the unbiased
    estimate (metrics.pass_at_k with n = samples, k = 1) averaged over problems, from samples drawn
    at he.SAMPLING_TEMPERATURE and he.SAMPLING_TOP_P."""
    problems = he.load_problems()
    problems = problems[:cfg.eval_humaneval_problems] if cfg.eval_humaneval_problems else problems
    prompt_format, render_chat = he.prompt_format(tok)
    sampled = samples > 1
    temperature, top_p = (he.SAMPLING_TEMPERATURE, he.SAMPLING_TOP_P) if sampled else (0.0, None)
    what = f"pass@1 of {samples} samples" if sampled else "greedy pass@1"
    records = he.evaluate_humaneval(model, tok, prompt_format, render_chat=render_chat, problems=problems,
                                    n=samples, temperature=temperature, top_p=top_p, seed=cfg.seed,
                                    max_new_tokens=cfg.eval_humaneval_max_new_tokens,
                                    batch_size=cfg.eval_batch_size,
                                    progress=progress_logger(f"eval: {stage} HumanEval", log))
    report = build_report(records, label=stage, benchmark="humaneval", format=prompt_format,
                          max_new_tokens=cfg.eval_humaneval_max_new_tokens, samples=samples,
                          temperature=temperature, top_p=top_p)
    log(f"eval: {stage} HumanEval {what} {report['summary']['overall'].get('pass@1', 0.0):.3f} "
        f"({len(problems)} problems, {prompt_format} prompt)")
    return report


def before_after(parts: dict, name: str) -> dict:
    """pass@1 of one part before and after, and its paired statistics (task by task)."""
    before, after = parts[name, "pretrain"], parts[name, "finetune"]
    return {"pass@1_before": before["summary"]["overall"].get("pass@1"),
            "pass@1_after": after["summary"]["overall"].get("pass@1"),
            "paired": paired_comparison(outcomes(before["records"]), outcomes(after["records"]),
                                        sampled=name == "humaneval_sampled")}


def pretrained_description(weights) -> str:
    """What a run's pretrained weights are when they were imported, not trained (minilm.stages.training.
    import_base records it in the file's metadata, e.g. "SmolLM2-135M-Instruct, Q4_1 GGUF,
    dequantised to fp32"); "" for weights pretrained here."""
    with safe_open(str(weights), framework="pt") as f:
        return (f.metadata() or {}).get("pretrained", "")


def split_kind_table(before: list[dict], after: list[dict]) -> dict:
    """{split: {kind: row}} from the two models' records: "tasks", pass@1 (explain F1 for explain)
    before and after, and on a pass@1 row with code tasks "paired", its tasks matched one by one."""
    summary_before, summary_after = _by_split_and_kind(before), _by_split_and_kind(after)
    table = {}
    for split in EVAL_SPLITS:
        table[split] = {}
        for kind in ("all", "generate", "repair", "explain"):
            old, new = summary_before.get((split, kind), {}), summary_after.get((split, kind))
            if new is None:
                continue
            if kind == "explain":
                table[split][kind] = {"tasks": new["explain_tasks"], "explain_f1_before": old.get("explain_f1"),
                                      "explain_f1_after": new.get("explain_f1")}
                continue
            row = table[split][kind] = {"tasks": new["code_tasks"], "pass@1_before": old.get("pass@1"),
                                        "pass@1_after": new.get("pass@1")}
            if new["code_tasks"]:
                def in_row(records):
                    return outcomes([r for r in records if r["split"] == split and kind in ("all", r["kind"])])
                row["paired"] = paired_comparison(in_row(before), in_row(after))
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


def _examples(tasks: list[dict], records: list[dict], splits) -> list[dict]:
    """One generated program per split (the first code task of each), with its verdict."""
    examples = []
    for split in splits:
        for task, record in zip(tasks, records):
            if task["split"] == split and record["kind"] != "explain" and record["completions"]:
                examples.append({"split": split, "text": task["text"], "code": record["completions"][0],
                                 "status": record["statuses"][0]})
                break
    return examples
