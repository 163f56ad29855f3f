"""The own_answers stage: the model's own verified answers, as fine-tuning targets.

    RUN_DIR/pretrain/model.safetensors -> k answers sampled per training task -> each run against
    the task's tests in the sandbox -> RUN_DIR/own_answers/answers.jsonl (one line per task: the
    first passing answer's code, or null) and summary.json (how many tasks got one)

With own_answers_from, another run's fine-tuned model samples instead of the base: STaR's next
round, for tasks the base almost never solves (the multi-step families, own_answers_steps_only).

Fine-tuning (minilm/stages/finetune.py) then trains on a task's own answer where it has one and on
the suite's reference where none passed: rejection-sampling fine-tuning (STaR, Zelikman et al.
2022; RFT, Yuan et al. 2023), with the unit tests as the only judge. An answer in the model's own
words moves it less far from what it knew than someone else's code (self-distillation), and the
sandbox's closed fake-pass routes (docs/sandbox.md) keep "passes its tests" honest.

The stage is off (writes nothing) while own_answers_samples is 0. Sampling is its cost, so it
samples the first own_answers_tasks code tasks of the train split only, chunk by chunk: each
finished chunk is appended to RUN_DIR/own_answers.partial/answers.jsonl, and an interrupted stage
resumes after the last whole line.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from minilm import checkpoint as ckpt, seeds
from minilm.config import ConfigError, RunConfig
from minilm.data.tasks.steps import STEP_FAMILY_NAMES
from minilm.evaluation.evaluate import evaluate_model
from minilm.evaluation.metrics import CODE_KINDS
from minilm.generation.completions import extract_code, progress_logger
from minilm.rundir import partial_dir, publish_stage
from minilm.runtime import runtime_for
from minilm.stages.common import task_suite
from minilm.stages.reuse import stage_key

STAGE = "own_answers"
ANSWERS_FILE, SUMMARY_FILE, KEY_FILE = "answers.jsonl", "summary.json", "inputs_key.txt"
CHUNK = 64  # tasks sampled between two appends to the partial file (what an interruption can lose)


def sampled_tasks(train: Sequence[dict], n: int, steps_only: bool = False) -> list[dict]:
    """The first n tasks of the train split that are judged by tests (generate and repair), only
    the multi-step families' with steps_only."""
    return [task for task in train if task.get("kind", "generate") in CODE_KINDS and task.get("test_list")
            and (not steps_only or task.get("family") in STEP_FAMILY_NAMES)][:n]


def own_answer(record: dict) -> Optional[str]:
    """The code (what the sandbox ran) of a task's shortest passing sample that defines each
    top-level name once, or None. A base model often repeats its function after the first copy:
    such an answer passes, but as a target it would teach the repetition."""
    passing = [extract_code(completion).strip("\n") for completion, status
               in zip(record["completions"], record["statuses"]) if status == "passed"]
    clean = [code for code in passing if not _defines_a_name_twice(code)]
    return min(clean, key=len) if clean else None


def _defines_a_name_twice(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return True
    names = [node.name for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return len(names) != len(set(names))


def with_own_answers(tasks: Sequence[dict], answers: dict[str, Optional[str]]) -> list[dict]:
    """The tasks with each own answer as the target code; a task without one keeps its reference."""
    return [{**task, "code": answers[task["task_id"]]} if answers.get(task["task_id"]) else task
            for task in tasks]


def read_answers(path: Path) -> dict[str, Optional[str]]:
    """{task_id: code or None} from an answers file; a torn last line (a kill mid-append) is ignored."""
    answers = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            answers[row["task_id"]] = row["code"]
    return answers


def load_own_answers(cfg: RunConfig) -> dict[str, Optional[str]]:
    """The finished stage's answers ({} when the stage is off)."""
    if cfg.own_answers_samples == 0:
        return {}
    path = Path(cfg.out_dir) / STAGE / ANSWERS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: own_answers_samples is {cfg.own_answers_samples}; "
                          f"run python train.py --stage own_answers first")
    return read_answers(path)


def summarize(tasks: Sequence[dict], answers: dict[str, Optional[str]], samples: int) -> dict:
    """How many tasks got an answer of the model's own, in all and by kind and family."""
    def count(chosen):
        return {"tasks": len(chosen), "with_own_answer": sum(answers.get(t["task_id"]) is not None for t in chosen)}
    by = lambda field: {value: count([t for t in tasks if t.get(field) == value])  # noqa: E731
                        for value in sorted({t.get(field) for t in tasks})}
    return {"samples_per_task": samples, **count(tasks), "by_kind": by("kind"), "by_family": by("family")}


def run_own_answers(cfg: RunConfig, resume: bool = True, log=print) -> Optional[dict]:
    """Sample, judge and save; returns the summary (None when the stage is off)."""
    if cfg.own_answers_samples == 0:
        log(f"{STAGE}: off (own_answers_samples 0): fine-tuning targets the suite's reference code")
        return None
    device, _ = runtime_for(cfg)
    run_dir = Path(cfg.out_dir)
    tasks = sampled_tasks(task_suite(cfg)["train"], cfg.own_answers_tasks, cfg.own_answers_steps_only)
    work = partial_dir(run_dir / STAGE)
    work.mkdir(parents=True, exist_ok=True)
    answers_path = work / ANSWERS_FILE
    key_path, key = work / KEY_FILE, stage_key(cfg, STAGE)
    same_inputs = key_path.is_file() and key_path.read_text() == key
    if not (resume and same_inputs):  # answers sampled from other settings are not resumed
        answers_path.unlink(missing_ok=True)
        key_path.write_text(key)
    answers = read_answers(answers_path)
    done_before = sum(task["task_id"] in answers for task in tasks)
    log(f"{STAGE}: {cfg.own_answers_samples} answers per task at temperature {cfg.own_answers_temperature} "
        f"for {len(tasks)} training tasks ({done_before} done before)")
    sampler = Path(cfg.own_answers_from).expanduser() if cfg.own_answers_from else None
    if sampler:  # STaR's next round: a model fine-tuned before answers (its tokenizer is its own)
        log(f"{STAGE}: sampling with the fine-tuned model of {sampler}")
    model, tok = ckpt.load_run(sampler or run_dir, stage="finetune" if sampler else "pretrain", device=device)
    progress = progress_logger(f"{STAGE}: sampling", log)
    for start in range(0, len(tasks), CHUNK):  # fixed chunks, each with its own seed
        chunk = tasks[start:start + CHUNK]
        if all(task["task_id"] in answers for task in chunk):
            continue
        records = evaluate_model(model, tok, chunk, cfg.eval_max_new_tokens, n_samples=cfg.own_answers_samples,
                                 temperature=cfg.own_answers_temperature,
                                 seed=seeds.own_answers_seed(cfg.seed, start), batch_size=cfg.eval_batch_size,
                                 with_teacher_forcing=False)
        with open(answers_path, "a") as f:  # whole lines, then fsync: a resume reads what is here
            for task, record in zip(chunk, records):
                answers[task["task_id"]] = own_answer(record)
                f.write(json.dumps({"task_id": task["task_id"], "code": answers[task["task_id"]]}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        progress(start + len(chunk), len(tasks))
    summary = summarize(tasks, answers, cfg.own_answers_samples)
    summary["sampler"] = f"the fine-tuned model of {sampler}" if sampler else "the base"
    ckpt.write_json_atomic(work / SUMMARY_FILE, summary)
    publish_stage(run_dir / STAGE)
    log(f"{STAGE}: {summary['with_own_answer']} of {summary['tasks']} tasks got a passing answer of the "
        f"model's own; the rest keep the reference")
    return summary
