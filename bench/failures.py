"""The held-out tasks and requests a run still fails, by split, family and what went wrong.

    python bench/failures.py RUN [--stage finetune|pretrain] [--examples 3]

Reads RUN/eval/STAGE.json and, when the run evaluated them, RUN/eval/requests_STAGE.json (the eval
stage's per-task records: statuses and details of each completion) and sorts every failed
completion of a code task (generate, repair) into one of minilm.evaluation.failures.CATEGORIES
(syntax, wrong_name, wrong_arguments, wrong_logic, exception, other). The tasks' entry points and
reference code come from the task suite itself, regenerated with the run's task_seed
(minilm.stages.eval.eval_tasks), and from the requests file, since the records do not carry them.
A request's family is its category (string, dict, parse, ...).

Printed: a table of failures by split x family x category (with each row's failed / code
completions), the totals per split, then up to --examples failures of each category: the task's
text, the program and the executor's detail.
"""
import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minilm import checkpoint as ckpt  # noqa: E402
from minilm.config import from_dict  # noqa: E402
from minilm.evaluation.failures import CATEGORIES, DESCRIPTIONS, classify_failure  # noqa: E402
from minilm.stages.eval import EVAL_SPLITS, REQUESTS, eval_tasks, request_tasks  # noqa: E402


def tasks_of(run: Path, records: list[dict]) -> dict[str, dict]:
    """{task_id: task} for the records, regenerated as the eval stage drew them."""
    cfg = from_dict(json.loads((run / ckpt.CONFIG_FILE).read_text()))
    in_suite = [r for r in records if r["split"] != REQUESTS]
    per_split = 1 + max((int(r["task_id"].rsplit("/", 1)[1]) for r in in_suite), default=0)  # the first N of each
    tasks = {t["task_id"]: t for t in eval_tasks(replace(cfg, eval_tasks_per_split=per_split))}
    tasks |= {t["task_id"]: t for t in request_tasks(cfg)}
    for r in records:
        task = tasks.get(r["task_id"])
        if task is None or (task["family"], task["kind"]) != (r["family"], r["kind"]):
            sys.exit(f"error: {r['task_id']} is not the task the run evaluated (the task suite or task_seed "
                     "changed since); cannot tell its function's name")
    return tasks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory with eval/ records (train.py's eval stage)")
    parser.add_argument("--stage", default="finetune", choices=("finetune", "pretrain"),
                        help="the model after fine-tuning (default) or before")
    parser.add_argument("--examples", type=int, default=3, help="failures shown per category")
    args = parser.parse_args()
    run = Path(args.run)
    path, requests = run / "eval" / f"{args.stage}.json", run / "eval" / f"requests_{args.stage}.json"
    if not path.is_file():
        sys.exit(f"error: {path} not found; run python train.py --stage eval --out_dir {run}")
    records = [r for file in (path, requests) if file.is_file()
               for r in json.loads(file.read_text())["records"] if "statuses" in r]  # code tasks
    tasks = tasks_of(run, records)

    counts, totals, examples = Counter(), Counter(), {c: [] for c in CATEGORIES}
    for r in records:
        task = tasks[r["task_id"]]
        for code, status, detail in zip(r["completions"] or [""] * len(r["statuses"]), r["statuses"], r["details"]):
            totals[r["split"], r["family"]] += 1
            if status == "passed":
                continue
            category = classify_failure(status, detail, code, task)
            counts[r["split"], r["family"], category] += 1
            examples[category].append((task, code, detail))

    print(f"{path}{' and ' + requests.name if requests.is_file() else ''}: {len(records)} code tasks, "
          f"{sum(totals.values())} completions, {sum(counts.values())} failed\n")
    header = ("split", "family", *CATEGORIES, "failed / all")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    splits = [s for s in (*EVAL_SPLITS, REQUESTS) if any(k[0] == s for k in totals)]
    for split in splits:
        families = sorted({f for s, f in totals if s == split})
        for family in [f for f in families if any(counts[split, f, c] for c in CATEGORIES)]:
            row = [counts[split, family, c] for c in CATEGORIES]
            print(f"| {split} | {family} | " + " | ".join(str(n or "") for n in row)
                  + f" | {sum(row)} / {totals[split, family]} |")
        row = [sum(counts[split, f, c] for f in families) for c in CATEGORIES]
        print(f"| **{split}** | all | " + " | ".join(map(str, row))
              + f" | {sum(row)} / {sum(totals[split, f] for f in families)} |")

    for category in CATEGORIES:
        shown = examples[category][:args.examples]
        print(f"\n## {category}: {DESCRIPTIONS[category]} ({len(examples[category])})")
        for task, code, detail in shown:
            print(f"\n--- {task['task_id']} ({task['family']}, {task['kind']}): {task['text']}")
            print(code.rstrip() or "(no program)")
            print(f">>> {detail or '(no detail)'}")


if __name__ == "__main__":
    main()
