"""Forward + backward throughput of the `small` model with the reference and the SDPA attention paths.

    python bench/bench_attention.py [--steps 10] [--batch_size 8] [--device cpu] [--dtype bfloat16]

Both paths run in the same process, interleaved, so the ratio is fair on a noisy machine.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's minilm, not an installed one
from minilm.config import PRESETS  # noqa: E402
from minilm.model.gpt import GPT  # noqa: E402
from minilm.runtime import autocast, machine_summary  # noqa: E402


def time_steps(model, idx, steps, dtype):
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(idx.device, dtype):
            logits = model(idx)
        logits.float().logsumexp(-1).mean().backward()  # any scalar exercises the backward pass
    if idx.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16 runs under autocast, as train.py's --dtype bfloat16 / fast")
    args = parser.parse_args()
    print(machine_summary())
    dtype = getattr(torch, args.dtype)

    config = PRESETS[args.config].model
    models = {}
    for path in ("reference", "sdpa"):
        torch.manual_seed(0)
        models[path] = GPT(replace(config, attention=path)).to(args.device)
    idx = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size), device=args.device)
    tokens = args.batch_size * config.block_size * args.steps
    for model in models.values():
        time_steps(model, idx, 1, dtype)  # warm-up
    best = {path: float("inf") for path in models}
    for _ in range(args.rounds):  # interleave the paths; keep each one's best round
        for path, model in models.items():
            best[path] = min(best[path], time_steps(model, idx, args.steps, dtype))
    print(f"{args.config} model ({models['sdpa'].num_parameters() / 1e6:.2f}M params), "
          f"batch {args.batch_size} x {config.block_size} tokens, device {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    for path in models:
        print(f"  {path:9s}: {tokens / best[path]:10.0f} tokens/s (forward+backward)")
    print(f"  sdpa / reference speed-up: {best['reference'] / best['sdpa']:.2f}x")


if __name__ == "__main__":
    main()
