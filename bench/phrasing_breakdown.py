"""Where test_phrasing is lost: pass@1 of a finished run by what is new in each task's wording.

    python bench/phrasing_breakdown.py runs/small

A test_phrasing task is new in its frame (frames 4-5: the sentence shape, e.g. "Given ..., compute
.... Name the function f."), in its what phrase (each family's last phrase: new vocabulary for
the same meaning), or in both. Reads RUN/eval/{pretrain,finetune}.json, the per-task records of
the eval stage, and the templates from the task suite the run used (config.json's task_seed).
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minilm.data.tasks import FAMILY_BY_NAME, SEEN_FRAMES, generate_suite  # noqa: E402
from minilm.data.tasks.family import template_parts  # noqa: E402

PARTS = ("new frame, seen what phrase", "seen frame, new what phrase", "new frame and new what phrase")


def novelty(task: dict) -> str:
    frame, what = template_parts(task["template"])
    new_frame = frame not in SEEN_FRAMES
    new_what = what == len(FAMILY_BY_NAME[task["family"]].whats) - 1
    return PARTS[2] if new_frame and new_what else PARTS[0] if new_frame else PARTS[1]


def breakdown(records: list[dict], tasks: dict) -> dict:
    """{part: [passed, total]} over the code tasks (generate and repair) of test_phrasing."""
    counts = defaultdict(lambda: [0, 0])
    for record in records:
        if record["split"] == "test_phrasing" and record["kind"] != "explain":
            part = counts[novelty(tasks[record["task_id"]])]
            part[0] += record["c"]
            part[1] += record["n"]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory whose eval stage has finished")
    args = parser.parse_args()
    if not (args.run / "config.json").is_file():
        raise SystemExit(f"error: {args.run} is not a run directory (no config.json); pass the out_dir of a run")
    config = json.loads((args.run / "config.json").read_text())
    suite = generate_suite(seed=config.get("task_seed", 0), n_train=0, n_valid=0, check=False)
    tasks = {task["task_id"]: task for task in suite["test_phrasing"]}
    print("| test_phrasing tasks | code tasks | pass@1 before | pass@1 after |\n|---|---|---|---|")
    results = {}
    for model in ("pretrain", "finetune"):
        path = args.run / "eval" / f"{model}.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing; run `python train.py --stage eval` for this run first")
        results[model] = breakdown(json.loads(path.read_text())["records"], tasks)
    for part in PARTS:
        (b_pass, n), (a_pass, _) = results["pretrain"][part], results["finetune"][part]
        if n:
            print(f"| {part} | {n} | {b_pass / n:.1%} | {a_pass / n:.1%} |")


if __name__ == "__main__":
    main()
