"""Training throughput and quality: fp32 vs bf16 autocast, same model, same batches, one run; and
the optimizer step of AdamW vs Muon with its Newton-Schulz iteration in fp32 and in bf16.

    python bench/bench_train.py            # 4 layers x 128 wide, context 128, 60 steps per precision
    python bench/bench_train.py --quick    # 2 layers x 64 wide, context 64, 20 steps (CI-sized)

First the machine (minilm.runtime.machine_summary: the CPU's name and cores, native bf16 or not).

Optimizer step: the `small` preset's parameters with random gradients, one warm-up step, then the
median of 20 timed steps (5 with --quick) of optimizer.step() alone: AdamW over everything (the
"adamw" optimizer), and Muon for the blocks' matrices + AdamW for the rest (the "muon" optimizer,
minilm/training/muon.py) with the iteration in fp32 and in bf16, as ratios to AdamW. Where bf16 is not
native the bf16 iteration is the slow one torch.optim.Muon always ran; the runtime picks fp32 there.

The data is real code read as bytes (vocabulary 256: no tokenizer to train), from the Python
standard library. Both precisions start from the same initial weights and see the same batches
through minilm.training.trainer (the training path train.py uses), so the only difference is autocast.
Prints tokens/s (median step time after warm-up), the validation loss after the last step, and
bf16 / fp32 ratios. On a CPU, bf16 pays only with native bf16 instructions (avx512_bf16 / AMX);
the script says which this processor has.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minilm import runtime  # noqa: E402
from minilm.config import PRESETS, ModelConfig  # noqa: E402
from minilm.model.gpt import GPT  # noqa: E402
from minilm.stages.pretrain import pretrain_batches  # noqa: E402
from minilm.training.optim import make_optimizer, newton_schulz_dtype  # noqa: E402
from minilm.training.trainer import TrainSettings, Trainer, estimate_loss  # noqa: E402


def stdlib_bytes(n_bytes: int) -> np.ndarray:
    """The first n_bytes of the stdlib's .py files in sorted order, as uint8 tokens."""
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:n_bytes], dtype=np.uint8).copy()


def run(dtype: torch.dtype, config: ModelConfig, tokens: np.ndarray, args, device) -> dict:
    split = int(len(tokens) * 0.9)
    train, val = tokens[:split], tokens[split:]
    torch.manual_seed(0)
    model = GPT(config).to(device)
    schedule = TrainSettings(stage="bench", max_iters=args.steps, lr=1e-3, min_lr=1e-4, warmup_iters=args.steps // 10,
                        batch_size=args.batch_size, grad_accum=1, eval_interval=10**9, log_interval=10**9)
    batches = pretrain_batches(train, args.batch_size, config.block_size, seed=0)
    val_batches = [pretrain_batches(val, args.batch_size, config.block_size, seed=1)(0, i) for i in range(4)]
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, schedule, batches, lambda m: {}, lambda *a: None, run_dir,
                          device=device, dtype=dtype, log=lambda *_: None)
        times, losses = [], []
        for step in range(args.steps):
            start = time.perf_counter()
            loss, _, tokens_per_step = trainer.train_step(step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            losses.append(loss)
    warm = times[max(1, len(times) // 5):]  # the first steps pay for allocation and caches
    val_loss = estimate_loss(model, val_batches, "token", device, dtype)["val_loss"]
    return {"tok_per_s": tokens_per_step / statistics.median(warm), "train_loss": losses[-1], "val_loss": val_loss}


def optimizer_step_ms(kind: str, ns_dtype, steps: int, device) -> float:
    """Median milliseconds of optimizer.step() over the `small` model's parameters (random gradients)."""
    torch.manual_seed(0)
    model = GPT(PRESETS["small"].model).to(device)
    for p in model.parameters():
        p.grad = 1e-3 * torch.randn_like(p)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), device.type, kind=kind)
    if ns_dtype is not None:
        optimizer.optimizers["muon"].ns_dtype = ns_dtype  # this machine's choice, or the other one
    times = []
    for _ in range(steps + 1):  # the first step allocates the state: untimed
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def compare_optimizers(steps: int, device) -> None:
    shapes = sorted({tuple(p.shape) for n, p in GPT(PRESETS["small"].model).named_parameters()
                     if p.dim() == 2 and ".h." in f".{n}"})
    print(f"optimizer step, small preset ({PRESETS['small'].model.n_layer} layers x "
          f"{PRESETS['small'].model.n_embd}; Muon matrices {', '.join('x'.join(map(str, s)) for s in shapes)}), "
          f"median of {steps}; this machine's Newton-Schulz dtype: {str(newton_schulz_dtype(device.type))[6:]}")
    adamw = optimizer_step_ms("adamw", None, steps, device)
    print(f"  {'adamw':<32}{adamw:>9.1f} ms")
    for dtype in (torch.float32, torch.bfloat16):
        ms = optimizer_step_ms("muon", dtype, steps, device)
        print(f"  {'muon + adamw, N-S in ' + str(dtype)[6:]:<32}{ms:>9.1f} ms   x{ms / adamw:.2f} adamw")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and 20 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0 = torch's default); on a shared machine 1 avoids threads "
                             "spinning against other work, which can cost 10x or more")
    parser.add_argument("--optimizer_only", action="store_true", help="only the optimizer-step figures")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(runtime.machine_summary())
    device = runtime.resolve_device(args.device)
    compare_optimizers(5 if args.quick else 20, device)
    if args.optimizer_only:
        return 0
    args.steps = args.steps or (20 if args.quick else 60)
    config = (ModelConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64) if args.quick
              else ModelConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128))
    tokens = stdlib_bytes(2_000_000 if not args.quick else 500_000)
    print(f"device: {device}; model {config.n_layer}x{config.n_embd}, context {config.block_size}, "
          f"batch {args.batch_size}, {args.steps} steps, {len(tokens):,} bytes of stdlib code")
    results = {name: run(dtype, config, tokens, args, device)
               for name, dtype in (("fp32", torch.float32), ("bf16-autocast", torch.bfloat16))}
    print(f"{'precision':<15}{'tokens/s':>12}{'train loss':>12}{'val loss':>10}")
    for name, r in results.items():
        print(f"{name:<15}{r['tok_per_s']:>12,.0f}{r['train_loss']:>12.5f}{r['val_loss']:>10.5f}")
    fp32, bf16 = results["fp32"], results["bf16-autocast"]
    print(f"bf16 / fp32: speed x{bf16['tok_per_s'] / fp32['tok_per_s']:.2f}, "
          f"val loss difference {bf16['val_loss'] - fp32['val_loss']:+.4f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
