"""Sampling cost per decoding step: the fast path (top-k candidates) against the reference (a full sort).

    python bench/bench_sampling.py [--rows 32] [--vocab 49152] [--temperature 0.2] [--top_p 0.95]

Logits shaped like a code model's (a few likely tokens over a long flat tail), one sample_next call
per row with its own generator, as the continuous-batching pool makes them. Prints ms per step for
each path and their ratio, with the processor and the load average.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minilm.generation.sampling import sample_next  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.rows, args.vocab, generator=g) * 2
    logits[:, :5] += 12  # a handful of likely tokens, as after a code prefix
    generators = [torch.Generator().manual_seed(r) for r in range(args.rows)]

    def step(reference: bool) -> torch.Tensor:
        return torch.cat([sample_next(logits[r:r + 1], args.temperature, None, args.top_p, generators[r],
                                      reference=reference) for r in range(args.rows)])
    times = {}
    for reference in (True, False, True, False):  # interleaved, the second round counted
        step(reference)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(reference)
        times[reference] = (time.perf_counter() - start) / args.steps * 1e3
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"processor: {cpu}; load average {os.getloadavg()[0]:.2f}; {args.rows} rows x {args.vocab} logits, "
          f"T {args.temperature}, top-p {args.top_p}")
    print(f"  reference (full sort): {times[True]:.1f} ms per step")
    print(f"  fast (top-k candidates): {times[False]:.1f} ms per step ({times[True] / times[False]:.1f}x)")


if __name__ == "__main__":
    main()
