"""The optimizer and its learning-rate schedule.

AdamW with decoupled weight decay, applied only where it means "prefer small weights":

    decay    : the weight matrices of Linear layers and the token embedding (tied to the LM head)
    no decay : biases, LayerNorm gains/shifts, and the position table wpe (a lookup of T vectors,
               decaying it only pulls rarely-seen late positions towards zero)

Rule used: a parameter decays when it is 2-D and is not the position embedding.

Optionally ("muon"), the weight matrices inside the blocks use Muon instead (minilm/training/muon.py): momentum
SGD whose update is orthogonalised by a few Newton-Schulz iterations (Jordan et al. 2024), scaled to
AdamW's update size ("match_rms_adamw") so the same lr applies. Embeddings, biases and LayerNorms
stay on AdamW, as Muon is defined for hidden matrices only. `OptimizerPair` steps both as one.
The Newton-Schulz iteration runs in bf16 where bf16 matmuls are native and in fp32 elsewhere
(`newton_schulz_dtype`), whatever --dtype says: it is the optimizer's arithmetic, not the model's.

TrainSettings (`lr_at`), as in GPT-2/nanoGPT:

    step < warmup:           lr * (step + 1) / warmup                    linear warm-up
    warmup <= step < total:  min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,  p = progress in [0, 1)
    step >= total:           min_lr                                       the floor
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn as nn

from minilm import runtime
from minilm.config_checks import OPTIMIZERS
from minilm.training.muon import Muon

NO_DECAY_NAMES = ("wpe.weight",)  # 2-D, but a position table, not a weight matrix


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group and a non-decayed group (names kept for reports)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.dim() >= 2 and not name.endswith(NO_DECAY_NAMES):
            decay.append((name, p))
        else:
            no_decay.append((name, p))
    groups = [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class OptimizerPair:
    """Two optimizers over disjoint parameters, stepped, zeroed and checkpointed as one."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self):
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict):
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def is_hidden_matrix(name: str, p: nn.Parameter) -> bool:
    """A weight matrix inside a transformer block: what Muon is for (not embeddings, not the head)."""
    return p.dim() == 2 and ".h." in f".{name}"


def newton_schulz_dtype(device_type: str) -> torch.dtype:
    """bf16 where bf16 matmuls are native (as torch.optim.Muon always does; the same figures on such
    machines), fp32 elsewhere: on a CPU without avx512_bf16 / AMX a bf16 matmul is 100-200x slower."""
    return torch.bfloat16 if runtime.has_native_bf16(torch.device(device_type)) else torch.float32


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device_type: str, groups: Optional[list[dict]] = None, kind: str = "adamw"):
    """AdamW (or Muon + AdamW, kind="muon") over the model's trainable parameters.

    `groups` lets a caller pass its own param groups (e.g. LoRA+ gives B a larger lr through an
    "lr_scale" key); by default `param_groups` splits decay / no-decay. The fused kernel is used on
    CUDA (one launch for all parameters), the multi-tensor "foreach" path elsewhere.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    if groups is not None and kind != "adamw":
        raise ValueError("custom param groups (e.g. LoRA+) are built for AdamW; use optimizer 'adamw'")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    on_muon = [(n, p) for n, p in named if is_hidden_matrix(n, p)] if kind == "muon" else []
    if groups is None:
        muon_names = {n for n, _ in on_muon}
        groups = param_groups([(n, p) for n, p in named if n not in muon_names], weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: everything is frozen; unfreeze a layer or add LoRA")
    for g in groups:
        g.setdefault("lr_scale", 1.0)  # the scheduler sets lr = schedule(step) * lr_scale
    kwargs = {"fused": True} if device_type == "cuda" else {"foreach": True}
    adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, **kwargs)
    if not on_muon:
        return adamw
    muon_group = {"params": [p for _, p in on_muon], "names": [n for n, _ in on_muon], "lr_scale": 1.0}
    muon = Muon([muon_group], lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw",
                ns_dtype=newton_schulz_dtype(device_type))
    return OptimizerPair(adamw=adamw, muon=muon)


def lr_at(step: int, lr: float, min_lr: float, warmup_iters: int, total_iters: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, cosine decay, then a floor."""
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    if step >= total_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, total_iters - warmup_iters)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
