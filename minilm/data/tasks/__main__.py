"""python -m minilm.data.tasks --out DIR [--seed S]: write one JSONL file per split and print counts."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from . import SPLITS, generate_suite, save_jsonl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilm.data.tasks", description=__doc__)
    parser.add_argument("--out", required=True, help="directory for train.jsonl, valid.jsonl, test_*.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-valid", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300, help="size of each test split")
    parser.add_argument("--steps-weight", type=float, default=0.0,
                        help="how often train/valid draw a multi-step family (RunConfig.task_steps_weight)")
    parser.add_argument("--no-check", action="store_true", help="skip running every solution against its tests")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        suite = generate_suite(seed=args.seed, n_train=args.n_train, n_valid=args.n_valid,
                               n_test=args.n_test, check=not args.no_check, steps_weight=args.steps_weight)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    for split in SPLITS:
        path = os.path.join(args.out, f"{split}.jsonl")
        save_jsonl(suite[split], path)
        kinds = Counter(record["kind"] for record in suite[split])
        print(f"{split:14s} {len(suite[split]):6d} tasks  "
              + "  ".join(f"{kind} {kinds[kind]}" for kind in ("generate", "repair", "explain"))
              + f"  -> {path}")
    families = len({record["family"] for split in SPLITS for record in suite[split]})
    print(f"{families} families; generated{' and checked' if not args.no_check else ''} in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
