"""LoRA (r=8, all linear layers of the blocks) vs full fine-tuning of the `small` model, one run.

    python bench/bench_lora.py            # batch 8 x 256 tokens, 10 timed steps per variant
    python bench/bench_lora.py --quick    # batch 4 x 128 tokens, 3 timed steps

Each variant trains in its own subprocess so that its peak memory is its own. What is measured:
  trainable params       parameters with requires_grad
  optimizer state        bytes of AdamW's exp_avg / exp_avg_sq tensors after the first step
  weights+grads+state    parameter bytes + gradient bytes + optimizer state, counted exactly
  checkpoint             bytes on disk: adapter_model.safetensors (LoRA) vs the model's weights
                         as safetensors (full); configs not counted
  training FLOPs         matmul FLOPs of one forward + backward, counted by torch's FlopCounterMode
                         (deterministic, unlike wall time on a shared machine)
  step time              wall time of forward + backward + AdamW step on random tokens, min and
                         median over the timed steps (min: least disturbed by other processes)
  peak RSS               resource.getrusage maxrss of the subprocess (whole process: Python, torch,
                         activations, allocator caches), and that peak minus the RSS right after the
                         model was built (= what training added)
  peak CUDA memory       with --device cuda: torch.cuda.max_memory_allocated during training
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's minilm, not an installed one
from minilm.config import PRESETS  # noqa: E402
from minilm.formats.peft import save_adapter  # noqa: E402
from minilm.loss import nll_loss  # noqa: E402
from minilm.model.gpt import GPT  # noqa: E402
from minilm.model.lora import apply_lora  # noqa: E402
from minilm.runtime import machine_summary  # noqa: E402
from minilm.training.freeze import count_parameters, lora_param_groups  # noqa: E402
from minilm.training.optim import param_groups  # noqa: E402


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_variant(variant: str, batch_size: int, seq_len: int, steps: int, device: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = GPT(PRESETS["small"].model).to(device)
    rss_after_build = current_rss_bytes()
    if variant == "lora":
        apply_lora(model, "all-linear", r=8, alpha=16)
        groups = lora_param_groups(model, lr=1e-3, weight_decay=0.1)
    else:
        groups = param_groups(model.named_parameters(), weight_decay=0.1)
    optimizer = torch.optim.AdamW(groups, lr=1e-3, foreach=True)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g).to(device)
    inputs, targets = idx[:, :-1], idx[:, 1:]

    def step():
        loss = nll_loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as flop_counter:
        nll_loss(model(inputs), targets).backward()
    step()  # warm-up; also creates the optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    params = list(model.parameters())
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    with tempfile.TemporaryDirectory() as tmp:
        if variant == "lora":
            save_adapter(model, tmp)
            checkpoint = Path(tmp) / "adapter_model.safetensors"
        else:
            from safetensors.torch import save_model  # handles the tied embedding / LM head
            checkpoint = Path(tmp) / "model.safetensors"
            save_model(model, str(checkpoint))
        checkpoint_bytes = checkpoint.stat().st_size
    trainable, total = count_parameters(model)
    return {
        "trainable": trainable, "total": total,
        "optimizer_state_bytes": tensor_bytes(state),
        "accounted_bytes": tensor_bytes(params) + tensor_bytes(p.grad for p in params if p.grad is not None)
        + tensor_bytes(state),
        "checkpoint_bytes": checkpoint_bytes,
        "train_flops": flop_counter.get_total_flops(),
        "step_min_s": times[0], "step_median_s": times[len(times) // 2],
        "threads": torch.get_num_threads(),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else 0,
        "peak_rss_bytes": peak_rss_bytes(),
        "training_rss_bytes": peak_rss_bytes() - rss_after_build,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 x 128 tokens, 3 timed steps")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)  # child process
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--seq_len", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    batch_size = args.batch_size or (4 if args.quick else 8)
    seq_len = args.seq_len or (128 if args.quick else 256)
    steps = args.steps or (3 if args.quick else 10)
    if args.variant:
        print(json.dumps(run_variant(args.variant, batch_size, seq_len, steps, args.device)))
        return
    print(machine_summary(), flush=True)

    results = {}
    for variant in ("full", "lora"):
        command = [sys.executable, __file__, "--variant", variant, "--batch_size", str(batch_size),
                   "--seq_len", str(seq_len), "--steps", str(steps), "--device", args.device]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    cfg = PRESETS["small"].model
    print(f"small model ({cfg.n_layer} layers, n_embd {cfg.n_embd}, vocab {cfg.vocab_size}); "
          f"batch {batch_size} x {seq_len} tokens, {steps} timed steps on {args.device} "
          f"({full['threads']} threads), "
          f"LoRA r=8 alpha=16 on all linear layers of the blocks")
    rows = [
        ("trainable params", "trainable", lambda v: f"{v:,}"),
        ("total params", "total", lambda v: f"{v:,}"),
        ("optimizer state (MiB)", "optimizer_state_bytes", lambda v: f"{v / 2**20:.2f}"),
        ("weights+grads+state (MiB)", "accounted_bytes", lambda v: f"{v / 2**20:.2f}"),
        ("checkpoint on disk (MiB)", "checkpoint_bytes", lambda v: f"{v / 2**20:.3f}"),
        ("fwd+bwd GFLOPs per step", "train_flops", lambda v: f"{v / 1e9:.2f}"),
        ("step time, min (ms)", "step_min_s", lambda v: f"{1000 * v:.0f}"),
        ("step time, median (ms)", "step_median_s", lambda v: f"{1000 * v:.0f}"),
        ("peak RSS (MiB)", "peak_rss_bytes", lambda v: f"{v / 2**20:.0f}"),
        ("peak RSS - RSS after build (MiB)", "training_rss_bytes", lambda v: f"{v / 2**20:.0f}"),
    ]
    if args.device == "cuda":
        rows.append(("peak CUDA memory (MiB)", "peak_cuda_bytes", lambda v: f"{v / 2**20:.0f}"))
    print(f"{'':34s} {'full':>14s} {'lora':>14s} {'lora/full':>10s}")
    for label, key, fmt in rows:
        ratio = lora[key] / full[key] if full[key] else float("nan")
        print(f"{label:34s} {fmt(full[key]):>14s} {fmt(lora[key]):>14s} {ratio:>10.3f}")


if __name__ == "__main__":
    main()
