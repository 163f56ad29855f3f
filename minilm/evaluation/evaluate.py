"""Evaluate a model on tasks by running the code it writes, as practitioners do.

    records = evaluate_model(model, tok, tasks, max_new_tokens=128)   # one record per task
    report = build_report(records, label="after fine-tuning")          # + summary by split/kind/family
    write_report(report, run_dir / "eval", "finetune")                  # eval/finetune.json and .md
    compare_reports(report_before, report_after)                        # the side-by-side table

For each task the model is given the fine-tuning prompt (minilm.data.sft.render_prompt) and decodes
greedily (or samples n times) until a special token. Then:
  - generate / repair: the completion is a program; minilm.evaluation.execution runs it against the task's
    `test_list` in a sandbox; a sample counts as correct when every assertion holds (pass@k);
  - explain: the completion is a description, scored by slot precision / recall / F1
    (minilm.data.tasks.explain_f1);
  - every kind, teacher-forced: the summed NLL and the argmax hits of the reference target tokens
    given the prompt (loss, perplexity and token accuracy on exactly the tokens fine-tuning learns).

Batching generation (with the KV cache). A rotary model (position "rope", the Llama family) takes
prompts of different lengths in one batch: sorted by length, left-padded, with an attention mask
that hides the padding and positions that start at each row's first real token (GPT.forward). A
model with learned absolute positions keeps batches of prompts of exactly equal length, unpadded.
A row that emits a stop token leaves the batch (GPT.generate), so the others go on at its size.
A rotary model goes further (continuous batching, minilm.generation.continuous_batching): one pool of rows,
refilled with the next prompts as rows finish, so the batch stays full instead of emptying. Either
way greedy results equal one-prompt-at-a-time decoding (tests/test_evaluate.py,
tests/test_continuous_batching.py).

Any file in the suite's JSONL schema can be scored: python -m minilm.evaluation --run RUN --task_file F
HumanEval (minilm.evaluation.humaneval): python -m minilm.evaluation --run RUN --benchmark humaneval [--n 10 --temperature 0.8]
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from minilm.data import sft
from minilm.data.tasks import explain_f1
from minilm.data.tasks.explain import content_tokens
from minilm.evaluation.execution import resolve_isolation, run_programs
from minilm.evaluation.metrics import CODE_KINDS, summarize
from minilm.generation.completions import extract_code, fence_closed, generate_from_prompts
from minilm.loss import head_sequence_stats

DETAIL_LIMIT = 300  # characters of each failure message kept in a record


# ---------------------------------------------------------------- generation
@torch.no_grad()
def generate_completions(model, tok, tasks: Sequence[dict], max_new_tokens: int = 128,
                         n_samples: int = 1, temperature: float = 0.0, top_k: Optional[int] = None,
                         top_p: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                         progress: Optional[Callable[[int, int], None]] = None,
                         continuous: bool = True) -> list[Optional[list[str]]]:
    """n_samples completions per task in the fine-tuning format (None where the prompt is too long).

    A code answer ends at the close of its first fenced block too (see fence_closed)."""
    prompts = [sft.render_prompt(tok, task) for task in tasks]
    is_code = [task.get("kind", "generate") in CODE_KINDS for task in tasks]
    closed = fence_closed(tok)
    return generate_from_prompts(model, prompts, sft.stop_token_ids(tok),
                                 lambda ids: sft.extract_completion(tok, ids), max_new_tokens,
                                 n_samples, temperature, top_k, top_p, seed, batch_size,
                                 stop_when=lambda i, ids: is_code[i] and closed(ids), progress=progress,
                                 continuous=continuous)


# ---------------------------------------------------------------- teacher forcing
@torch.no_grad()
def teacher_forced(model, tok, tasks: Sequence[dict], batch_size: int = 16) -> list[Optional[dict]]:
    """Per task: summed NLL (nats), number of target tokens and argmax hits, or None if too long."""
    block_size = model.config.block_size
    rendered = [sft.render_example(tok, task) for task in tasks]
    fits = [i for i, (ids, _) in enumerate(rendered) if len(ids) <= block_size + 1]
    pad_id = sft.pad_token_id(tok)
    results: list[Optional[dict]] = [None] * len(tasks)
    was_training = model.training
    model.eval()
    for start in range(0, len(fits), batch_size):
        chunk = fits[start:start + batch_size]
        idx, targets, loss_mask = sft.collate([rendered[i][0] for i in chunk],
                                              [rendered[i][1] for i in chunk], pad_id,
                                              device=next(model.parameters()).device)
        # summed NLL, counted tokens and argmax hits per row (B,), the head only at the target tokens
        nll_sum, n_tokens, correct = head_sequence_stats(model(idx, return_hidden=True), model.lm_head,
                                                         targets, loss_mask)
        for row, i in enumerate(chunk):
            results[i] = {"tf_nll": float(nll_sum[row]), "tf_tokens": int(n_tokens[row]),
                          "tf_correct": int(correct[row])}
    model.train(was_training)
    return results


# ---------------------------------------------------------------- scoring
def task_tests(task: dict) -> list[str]:
    """The statements a program must pass: MBPP's optional test_setup_code, then test_list."""
    setup = task.get("test_setup_code") or ""
    return ([setup] if setup.strip() else []) + list(task["test_list"])


def explain_scores(predicted_text: str, task: dict) -> tuple[float, float, float]:
    """Slot precision / recall / F1; tasks from other files without slots use their text's words."""
    if "slots" not in task:
        task = {**task, "slots": sorted(content_tokens(task["text"]))}
    return explain_f1(predicted_text, task)


def score_completions(tasks: Sequence[dict], completions: Sequence[Optional[list[str]]],
                      timeout: float = 3.0, workers: Optional[int] = None,
                      isolation: str = "auto") -> list[dict]:
    """One record per task from its completions: executor statuses, or explain scores.

    A code completion runs as the code of its fenced block when it has one (extract_code): an
    instruct model's Markdown is its answer's wrapping, not a syntax error."""
    isolation = resolve_isolation(isolation)
    jobs, owners = [], []  # every code sample of every task, run in one parallel pass
    for t, (task, samples) in enumerate(zip(tasks, completions)):
        if task.get("kind", "generate") in CODE_KINDS and samples is not None:
            for sample in samples:
                jobs.append((extract_code(sample), task_tests(task)))
                owners.append(t)
    results = run_programs(jobs, timeout, workers=workers, isolation=isolation) if jobs else []
    by_task: dict[int, list] = {}
    for t, result in zip(owners, results):
        by_task.setdefault(t, []).append(result)
    records = []
    for t, (task, samples) in enumerate(zip(tasks, completions)):
        kind = task.get("kind", "generate")
        record = {"task_id": task["task_id"], "split": task.get("split"), "kind": kind,
                  "family": task.get("family"), "completions": samples or []}
        if kind in CODE_KINDS:
            if samples is None:  # the prompt alone overflows the context: a failure, said so
                record.update(n=1, c=0, statuses=["prompt_too_long"], details=[""])
            else:
                outcome = by_task[t]
                record.update(n=len(outcome), c=sum(r.passed for r in outcome),
                              statuses=[r.status for r in outcome],
                              details=[r.detail[:DETAIL_LIMIT] for r in outcome])
        else:
            scores = [explain_scores(s, task) for s in (samples or [""])]
            for name, column in zip(("precision", "recall", "f1"), zip(*scores)):
                record[name] = sum(column) / len(column)
        records.append(record)
    return records


def evaluate_model(model, tok, tasks: Sequence[dict], max_new_tokens: int = 128, *,
                   n_samples: int = 1, temperature: float = 0.0, top_k: Optional[int] = None,
                   top_p: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                   timeout: float = 3.0, workers: Optional[int] = None, isolation: str = "auto",
                   with_teacher_forcing: bool = True,
                   progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Generate, run and score every task; one record per task (see minilm.evaluation.metrics for the keys).
    progress(tasks generated, tasks) is called as generation goes."""
    if not tasks:
        raise ValueError("no tasks to evaluate; pass a non-empty list of task records")
    completions = generate_completions(model, tok, tasks, max_new_tokens, n_samples, temperature,
                                       top_k, top_p, seed, batch_size, progress)
    records = score_completions(tasks, completions, timeout, workers, isolation)
    if with_teacher_forcing:
        for record, forced in zip(records, teacher_forced(model, tok, tasks, batch_size)):
            record.update(forced or {"tf_tokens": 0})
    return records


def build_report(records: Sequence[dict], label: str = "model", ks=None, **settings) -> dict:
    """{"meta": label, isolation and settings, "summary": by split/kind/family, "records": ...}."""
    meta = {"label": label, "isolation": resolve_isolation(settings.pop("isolation", "auto")),
            "tasks": len(records), **settings}
    return {"meta": meta, "summary": summarize(records, ks), "records": list(records)}


