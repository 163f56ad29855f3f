"""A pretraining step of our decoder against nanoGPT's, at the same shape, data and optimizer.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT      # the referee, never a dependency
    MINILM_NATIVE_BF16=0 python bench/bench_nanogpt.py --nanogpt /tmp/nanoGPT/model.py

nanoGPT's model.py is loaded from the path given (its own code, unchanged). Both models are GPT-2
shaped (learned positions, LayerNorm and biases, GELU MLP, tied head, dropout 0) and start from the
same weights: ours are copied into theirs, whose parameter names are ours one for one. A step, as
each project's training loop takes it: a (B, T) batch of token ids (the same random batches for
both), the next-token cross-entropy (ours: minilm.loss.head_sequence_nll on the hidden states, as
minilm.training.trainer computes it; theirs: model(idx, targets)), backward, gradient clipping at
1.0, AdamW (lr 6e-4, betas 0.9 / 0.95, weight decay 0.1 on the matrices; each side's own
optimizer set-up). Three contestants, interleaved step by step so that a change in the machine's
load hits all of them: nanoGPT, ours with our fp32 linears on oneDNN (the default), and ours with
F.linear (MINILM_ONEDNN=0's path). The first steps' losses are printed, so that the three are seen
computing the same function; the figure is tokens/s over the timed steps, and the ratios to nanoGPT.
Shapes: issue 32's, 6 x 384 at T 256, B 16 and 4 x 128 at T 128, B 12 (vocab 4096, small's).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minilm.config import ModelConfig  # noqa: E402
from minilm.loss import head_sequence_nll  # noqa: E402
from minilm.model.gpt import GPT  # noqa: E402
from minilm.model.linear import linear_backend, reference_path  # noqa: E402
from minilm.runtime import machine_summary  # noqa: E402
from minilm.training.optim import make_optimizer  # noqa: E402

SHAPES = {"6x384": (6, 384, 6, 256, 16), "4x128": (4, 128, 4, 128, 12)}  # layers, width, heads, T, B
LR, BETAS, WEIGHT_DECAY, CLIP = 6e-4, (0.9, 0.95), 0.1, 1.0


def load_nanogpt(path: str):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_step(model, optimizer, idx, targets) -> float:
    hidden = model(idx, return_hidden=True)
    nll_sum, tokens = head_sequence_nll(hidden, model.lm_head, targets)
    loss = nll_sum.sum() / tokens.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def their_step(model, optimizer, idx, targets) -> float:
    _, loss = model(idx, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def bench_shape(nanogpt, name: str, steps: int, warmup: int, vocab: int) -> None:
    n_layer, n_embd, n_head, T, B = SHAPES[name]
    config = ModelConfig(vocab_size=vocab, block_size=T, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    torch.manual_seed(0)
    reference = GPT(config)
    contestants = {}
    for label in ("minilm, oneDNN linears", "minilm, F.linear"):
        ours = GPT(config)
        ours.load_state_dict(reference.state_dict())
        contestants[label] = (ours, make_optimizer(ours, LR, WEIGHT_DECAY, BETAS, "cpu"), our_step)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(block_size=T, vocab_size=vocab, n_layer=n_layer, n_head=n_head,
                                           n_embd=n_embd, dropout=0.0, bias=True))
    missing, unexpected = theirs.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing), (missing, unexpected)
    contestants["nanoGPT"] = (theirs, theirs.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu"), their_step)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (B, T + 1), generator=g) for _ in range(warmup + steps)]
    seconds = {label: 0.0 for label in contestants}
    losses = {label: [] for label in contestants}
    for i, batch in enumerate(batches):
        idx, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # nanoGPT views them
        for label, (model, optimizer, step) in contestants.items():
            start = time.perf_counter()
            if label == "minilm, F.linear":
                with reference_path():
                    loss = step(model, optimizer, idx, targets)
            else:
                loss = step(model, optimizer, idx, targets)
            if i >= warmup:
                seconds[label] += time.perf_counter() - start
            losses[label].append(loss)
    tokens = steps * B * T
    print(f"{name}: {n_layer} layers x {n_embd}, T {T}, B {B}, vocab {vocab}; {warmup} warm-up + {steps} timed steps")
    for label in contestants:
        first = ", ".join(f"{x:.4f}" for x in losses[label][:3])
        print(f"  {label:24s} {tokens / seconds[label]:8.0f} tokens/s  "
              f"({tokens / seconds[label] / (tokens / seconds['nanoGPT']):.2f}x nanoGPT)  losses {first}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", required=True, help="path of nanoGPT's model.py")
    parser.add_argument("--shapes", default="6x384,4x128")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.nanogpt).is_file():
        raise SystemExit(f"--nanogpt {args.nanogpt}: no such file; git clone https://github.com/karpathy/nanoGPT "
                         "and give the path of its model.py")
    torch.set_num_threads(args.threads)
    nanogpt = load_nanogpt(args.nanogpt)
    print(f"{machine_summary()}; our linear backend {linear_backend()}; load average {os.getloadavg()[0]:.2f}")
    for name in args.shapes.split(","):
        bench_shape(nanogpt, name, args.steps, args.warmup, args.vocab)


if __name__ == "__main__":
    main()
