"""Which parameters train during fine-tuning, and at what learning rate.

Three ways to fine-tune a pretrained decoder, chosen by RunConfig.finetune:

    "lora"   apply_lora(model, ...)                       adapters only; the base is frozen
    "top_k"  freeze_all(model); unfreeze_top_k_blocks(model, k)
                                                          full weights of the last k blocks + ln_f
    "lora+top_k"  apply_lora(model, ...); unfreeze_top_k_blocks(model, k)
                                                          adapters everywhere, full weights on top

The token embedding (tied to the LM head) is never unfrozen here: it is the largest matrix and
changing it moves every layer's input.

LoRA+ (Hayou et al., 2024): B's learning rate should be larger than A's, lr_B = ratio * lr_A
(ratio ~ 16 in the paper), because B starts at zero and A at a random matrix. `lora_param_groups`
builds AdamW param groups that carry it.
"""
from __future__ import annotations

import torch.nn as nn

from minilm.training.optim import param_groups


def freeze_all(model: nn.Module) -> None:
    """requires_grad = False on every parameter."""
    model.requires_grad_(False)


def unfreeze_top_k_blocks(model: nn.Module, k: int) -> list[str]:
    """Make every parameter of the last k blocks and of the final LayerNorm trainable.

    Touches nothing else, so it works on its own (after freeze_all) or next to LoRA adapters
    (their base weights in those blocks then train too). Returns the names unfrozen.
    """
    blocks = model.transformer.h
    if not isinstance(k, int) or not 0 <= k <= len(blocks):
        raise ValueError(f"top_k_layers must be an integer in [0, {len(blocks)}] (the model has "
                         f"{len(blocks)} blocks), got {k!r}")
    first = len(blocks) - k
    prefixes = tuple(f"transformer.h.{i}." for i in range(first, len(blocks)))
    if k > 0:
        prefixes += ("transformer.ln_f.",)
    unfrozen = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad = True
            unfrozen.append(name)
    return unfrozen


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, tied weights counted once."""
    params = list(model.parameters())  # parameters() already skips the tied duplicate
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_parameter_report(model: nn.Module) -> str:
    """One line for the start of fine-tuning: trainable / total parameters and the percentage."""
    trainable, total = count_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} / {total:,} ({percent:.2f}%)"


def lora_param_groups(model: nn.Module, lr: float, weight_decay: float,
                      loraplus_ratio: float = 1.0) -> list[dict]:
    """AdamW param groups for the trainable parameters, with LoRA+ on the B matrices.

    Decay follows minilm/training/optim.py (2-D weights decay; biases, norms and DoRA magnitudes do not).
    Each group carries "lr" (usable by torch.optim.AdamW directly), "lr_scale" (for the trainer's
    schedule: lr = schedule(step) * lr_scale) and "names". lora_B groups get lr_scale = loraplus_ratio.
    """
    if not loraplus_ratio > 0:
        raise ValueError(f"loraplus_ratio must be positive, got {loraplus_ratio!r}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: apply_lora(...) or unfreeze_top_k_blocks(...) first")
    b_params = [(n, p) for n, p in trainable if n.endswith("lora_B")]
    others = [(n, p) for n, p in trainable if not n.endswith("lora_B")]
    groups = []
    for named, scale in ((others, 1.0), (b_params, loraplus_ratio)):
        for group in param_groups(named, weight_decay):
            group.update(lr=lr * scale, lr_scale=scale)
            groups.append(group)
    return groups
