"""SmolLM2-135M-Instruct in our decoder vs transformers (+ peft), on the same GGUF file, one run.

    python bench/bench_smollm2.py                # the issue's sizes (several minutes on 2 cores)
    python bench/bench_smollm2.py --quick        # small sizes, to check that it runs (~3 CPU-minutes)
    python bench/bench_smollm2.py --threads 2    # the thread count of both sides (default: all cores)

Each side runs in its own subprocess, with the same token ids, dtype and thread count. Measured:
  forward          tokens/s of a no-grad forward pass to the logits of every position, batch 8 x 128
                   (best of the timed repetitions)
  LoRA step        tokens/s (all B x T positions) of fine-tuning with rank-16 adapters (alpha 32) on
                   every linear layer of the blocks, batch 8 x 128, AdamW: forward, loss, backward,
                   step. An SFT-shaped batch: the first half of each row is prompt, which the loss
                   does not count, the second half answer, which it does. Each side as its users
                   write it. Ours as minilm's trainer does it: minilm.model.lora.apply_lora, then
                   model(idx, return_hidden=True) and minilm.loss.head_nll_loss, so the 49,152-wide
                   LM head runs on the counted rows only. Theirs: peft's LoraConfig with
                   target_modules="all-linear", model(input_ids).logits over every position and
                   cross-entropy with the prompt's labels set to -100. Both losses are the mean
                   over counted tokens; the first step's two losses are printed (the same number:
                   fresh adapters change nothing). Our fused c_attn ([q; k; v]) and c_fc
                   ([gate; up]) get one adapter each where peft adapts each projection, so ours
                   trains fewer parameters (printed)
  generate         greedy tokens/s with the KV cache, 16-token prompts + 64 new tokens: ours a
                   batch of 16 prompts at once, theirs `generate` at batch size 1, as it is usually
                   called; end-of-text is not a stop
  peak memory      the process's peak RSS during each measurement (Linux: VmHWM after resetting it
                   through /proc/self/clear_refs), and the RSS of the loaded model
Before timing, the forward logits of the two sides are compared (max abs difference), so the
speeds are of the same function. Our fp32 matmuls run on oneDNN, transformers' on torch's default
(MKL) kernel (minilm/model/linear.py; MINILM_ONEDNN=0 in the environment gives ours torch's too); the
"linears" line says which ran.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's minilm

SIZES = {  # forward batch, LoRA batch, LoRA timed steps, generation (our batch, prompt, new tokens)
    "full": dict(forward=(8, 128), forward_reps=3, lora=(8, 128), lora_steps=5, gen_batch=16, prompt=16, new=64),
    "quick": dict(forward=(2, 64), forward_reps=2, lora=(2, 64), lora_steps=2, gen_batch=4, prompt=8, new=16),
}


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "reset the peak resident set size to the current one" (Linux >= 4.0)
    except OSError:
        pass  # then the peak below is the process's, since it started


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def measured(fn):
    """(fn(), seconds, peak RSS bytes while it ran)."""
    reset_peak_rss()
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start, peak_rss_bytes()


# ---------------------------------------------------------------- the two sides
def load(side: str, path: str, dtype: torch.dtype):
    """The model and two functions: logits(idx) and generate(idx, new_tokens)."""
    if side == "ours":
        from minilm.formats.gguf import load_gguf
        model = load_gguf(path, dtype=dtype)
        return (model, lambda idx: model(idx),
                lambda idx, new: model.generate(idx, new, temperature=0))
    import transformers
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype).eval()
    # eos_token_id=None: run every new token, as ours does (SmolLM2's eos would end it early)
    greedy = transformers.GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=2)
    return (model, lambda idx: model(idx).logits,
            lambda idx, new: model.generate(idx, generation_config=greedy, max_new_tokens=new))


def lora_step_function(side: str, model, inputs, targets, loss_mask):
    """One fine-tuning step (forward, loss, backward, AdamW) with rank-16 adapters on every linear."""
    if side == "ours":
        from minilm.loss import head_nll_loss
        from minilm.model.lora import apply_lora
        apply_lora(model, "all-linear", r=16, alpha=32)
        # the trainer's loss: hidden states, then the head on the counted rows only
        loss_fn = lambda: head_nll_loss(model(inputs, return_hidden=True), model.lm_head,  # noqa: E731
                                        targets, loss_mask, normalize="token")
    else:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        labels = targets.masked_fill(~loss_mask, -100)
        loss_fn = lambda: torch.nn.functional.cross_entropy(  # noqa: E731
            model(input_ids=inputs).logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def step():
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step, sum(p.numel() for p in trainable)


def run_side(side: str, path: str, sizes: dict, dtype: torch.dtype, seed: int = 0) -> dict:
    (model, logits, generate), load_s, _ = measured(lambda: load(side, path, dtype))
    result = dict(load_s=load_s, model_rss=rss_bytes())
    g = torch.Generator().manual_seed(seed)  # the same ids on both sides
    tokens = lambda *shape: torch.randint(0, model.config.vocab_size, shape, generator=g)  # noqa: E731
    forward_idx = tokens(*sizes["forward"])
    B, T = sizes["lora"]
    lora_idx = tokens(B, T + 1)
    loss_mask = torch.arange(T).expand(B, T) >= T // 2  # the answer half counts
    prompts = tokens(sizes["gen_batch"], sizes["prompt"])
    with torch.no_grad():
        # the parent compares the two sides' logits, so the speeds below are of the same function
        result["logits_sample"] = logits(forward_idx)[0, -1, :1000].float().tolist()
        runs = [measured(lambda: logits(forward_idx)) for _ in range(sizes["forward_reps"])]
        result.update(forward_tps=forward_idx.numel() / min(r[1] for r in runs),
                      forward_peak=max(r[2] for r in runs))
        gen_prompts = prompts if side == "ours" else prompts[:1]  # theirs: batch 1
        generate(gen_prompts[:, :4], 2)  # warm-up
        out, seconds, peak = measured(lambda: generate(gen_prompts, sizes["new"]))
        result.update(generate_tps=gen_prompts.size(0) * sizes["new"] / seconds, generate_peak=peak,
                      generate_batch=gen_prompts.size(0), first_row=out[0].tolist())
    step, trainable = lora_step_function(side, model, lora_idx[:, :-1], lora_idx[:, 1:], loss_mask)
    first_loss = step()  # warm-up; creates AdamW's state
    runs = [measured(step) for _ in range(sizes["lora_steps"])]
    result.update(lora_tps=B * T / min(r[1] for r in runs), lora_peak=max(r[2] for r in runs),
                  lora_trainable=trainable, lora_first_loss=first_loss)
    if side == "ours":
        from minilm.model.linear import linear_backend
        result["linears"] = linear_backend()
    return result


# ---------------------------------------------------------------- the report
def processor() -> str:
    from minilm.runtime import cpu_has_native_bf16
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"bf16 {'native' if cpu_has_native_bf16() else 'not native'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that it runs")
    parser.add_argument("--gguf", default=None, help="a llama GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--side", choices=["ours", "theirs"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(run_side(args.side, args.gguf, sizes, getattr(torch, args.dtype))))
        return

    from minilm.formats.gguf import default_gguf_path
    path = args.gguf or str(default_gguf_path())
    results = {}
    for side in ("ours", "theirs"):
        command = [sys.executable, __file__, "--side", side, "--gguf", path, "--threads", str(args.threads),
                   "--dtype", args.dtype] + (["--quick"] if args.quick else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    ours, theirs = results["ours"], results["theirs"]
    difference = max(abs(a - b) for a, b in zip(ours["logits_sample"], theirs["logits_sample"]))
    same_tokens = ours["first_row"] == theirs["first_row"]
    print(f"{os.path.basename(path)}, {args.dtype}, {args.threads} threads; {processor()}")
    print(f"forward logits: max abs difference {difference:.2e} (1000 logits); greedy row 0 "
          f"{'identical' if same_tokens else 'DIFFERENT'} over {sizes['new']} new tokens")
    print(f"LoRA first-step loss (mean NLL of the counted tokens): ours {ours['lora_first_loss']:.6f}, "
          f"transformers + peft {theirs['lora_first_loss']:.6f}")
    print(f"sizes: forward {sizes['forward'][0]} x {sizes['forward'][1]}, LoRA r=16 batch {sizes['lora'][0]} x "
          f"{sizes['lora'][1]} (answer half counted; ours runs the head on those rows only), generate "
          f"{sizes['prompt']}-token prompts + {sizes['new']} new (ours batch {ours['generate_batch']}, "
          f"transformers batch {theirs['generate_batch']})")
    print(f"linears: ours {ours['linears']} (minilm/model/linear.py), transformers torch")
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    rows = [
        ("load seconds", "load_s", lambda v: f"{v:.1f}"),
        ("RSS of the loaded model", "model_rss", mib),
        ("forward tokens/s", "forward_tps", lambda v: f"{v:,.0f}"),
        ("forward peak RSS", "forward_peak", mib),
        ("LoRA trainable params", "lora_trainable", lambda v: f"{v:,}"),
        ("LoRA step tokens/s", "lora_tps", lambda v: f"{v:,.0f}"),
        ("LoRA step peak RSS", "lora_peak", mib),
        ("generate batch", "generate_batch", str),
        ("generate tokens/s", "generate_tps", lambda v: f"{v:,.1f}"),
        ("generate peak RSS", "generate_peak", mib),
    ]
    print(f"{'':26s} {'ours':>12s} {'transformers':>14s} {'ours/theirs':>12s}")
    for label, key, fmt in rows:
        ratio = ours[key] / theirs[key] if isinstance(ours[key], (int, float)) and theirs[key] else float("nan")
        print(f"{label:26s} {fmt(ours[key]):>12s} {fmt(theirs[key]):>14s} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
