"""Seconds that run_programs takes for trivial passing programs, per isolation level.

    python bench/bench_sandbox.py [--n 200] [--workers 2] [--repeats 3] [--isolation bwrap]

Each program is mostly interpreter start-up, so this measures the sandbox's own cost: what an
eval stage pays per sample. The best of the repeats is printed (the machine may be shared).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's minilm, not an installed one
from minilm.evaluation.execution import available_isolations, run_programs  # noqa: E402

PROGRAM = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--isolation", nargs="*", default=None, help="default: every level available")
    args = parser.parse_args()
    for isolation in args.isolation or available_isolations():
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = run_programs([(PROGRAM, TESTS)] * args.n, timeout=10, workers=args.workers,
                                   isolation=isolation)
            seconds.append(time.perf_counter() - start)
            assert all(r.passed for r in results), {r.status for r in results}
        print(f"{isolation:8s} {args.n} programs, {args.workers} workers: best {min(seconds):.2f} s "
              f"(all: {', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
