"""Adapter checkpoints in Hugging Face PEFT's layout: the adapter and its config, never the base.

A directory holds two files, the ones `PeftModel.save_pretrained` writes for a LoRA adapter:

    adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...], ...}
    adapter_model.safetensors  keys "base_model.model." + our module name + one of
        .lora_A.weight           (r, in)
        .lora_B.weight           (out, r)
        .lora_magnitude_vector   (out,)   DoRA
        .base_layer.bias         (out,)   bias "all" or "lora_only" (the adapted layer's bias)
    plus, for bias "all", every other bias (".ln_1.bias", ...) under its plain name.
    e.g. base_model.model.transformer.h.0.attn.c_attn.lora_A.weight

Our module names are GPT-2's and PEFT keeps A as (r, in) and B as (out, r) even for GPT-2's Conv1D
layers (it transposes only the merged B A, which is what fan_in_fan_out=True says), so the tensors
are written as they are: the file loads onto a Hugging Face GPT-2 built from the base model's
`to_hf_gpt2()` (exported before apply_lora), and an adapter PEFT trained on such a GPT-2 loads here. The bytes grow with r, not with the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from minilm.model.lora import (LoRAConfig, apply_lora, candidate_linears, lora_layers, matches_target,
                         resolve_targets)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the wrapped transformer
PEFT_NAMES = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight",  # PEFT's A, B are nn.Linear modules
              "lora_magnitude_vector": "lora_magnitude_vector"}
UNSUPPORTED_FIELDS = ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                      "exclude_modules", "trainable_token_indices")


def _peft_key(name: str) -> str:
    """Our parameter name -> PEFT's key: prefix, and lora_A -> lora_A.weight."""
    module, _, leaf = name.rpartition(".")
    return f"{PEFT_PREFIX}{module}.{PEFT_NAMES.get(leaf, leaf)}"


def _saved_names(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Names (ours) of the parameters an adapter file holds: adapters, plus biases per config.bias."""
    layers = lora_layers(model)
    names = []
    for name, _ in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        if leaf in PEFT_NAMES:
            names.append(name)
        elif leaf == "bias" and (config.bias == "all" or (
                config.bias == "lora_only" and module.removesuffix(".base_layer") in layers)):
            names.append(name)
    return names


def _target_modules(model: nn.Module, config: LoRAConfig):
    """target_modules as PEFT reads it, selecting exactly our adapted layers: the leaf names if they
    do (["c_attn", "c_fc", "c_proj"]), else the list given, else every full name. A regex is never
    written: PEFT would also try it on modules that are not linear (attn, ln_1) and fail."""
    adapted = set(lora_layers(model))
    selectable = adapted | set(candidate_linears(model))
    leaves = sorted({name.rpartition(".")[2] for name in adapted})
    for option in (leaves, config.targets):
        if isinstance(option, list) and {n for n in selectable if matches_target(n, option)} == adapted:
            return option
    return sorted(adapted)


def save_adapter(model: nn.Module, directory) -> None:
    """Write the adapter (A, B, DoRA magnitudes, chosen biases) and its config, in PEFT's format."""
    config = getattr(model, "lora_config", None)
    if config is None or not lora_layers(model):
        raise ValueError("the model has no LoRA adapters to save; call apply_lora(model, ...) first")
    names = _saved_names(model, config)
    params = dict(model.named_parameters())
    not_saved = [n for n, p in params.items() if p.requires_grad and n not in names]
    if not_saved:
        raise ValueError(f"{len(not_saved)} trained parameters are not part of a LoRA adapter (e.g. "
                         f"{not_saved[0]}, from top-k fine-tuning?); save a full checkpoint instead")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {_peft_key(n): params[n].detach().cpu().contiguous() for n in names}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    alpha = int(config.alpha) if config.alpha.is_integer() else config.alpha  # PEFT's field is an int
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
        "r": config.r, "lora_alpha": alpha, "lora_dropout": config.dropout,
        "target_modules": _target_modules(model, config), "bias": config.bias,
        "use_rslora": config.rslora, "use_dora": config.dora,
        "fan_in_fan_out": True,  # Hugging Face GPT-2's Conv1D stores (in, out); A and B do not change
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    (directory / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2) + "\n")


def read_adapter_config(directory) -> LoRAConfig:
    """adapter_config.json -> LoRAConfig, refusing the PEFT features we do not implement."""
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no adapter config; give a directory written by save_adapter "
                                "or PeftModel.save_pretrained")
    raw = json.loads(path.read_text())
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {raw.get('peft_type')!r}; only 'LORA' adapters load here")
    used = [f for f in UNSUPPORTED_FIELDS if raw.get(f)]
    if used:
        raise ValueError(f"{path}: uses {used}, which minilm does not implement; retrain without them")
    missing = [f for f in ("r", "lora_alpha", "target_modules") if not raw.get(f)]
    if missing:
        raise ValueError(f"{path}: {missing} missing or empty; an adapter config needs all of them")
    return LoRAConfig(targets=raw["target_modules"], r=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                      dropout=float(raw.get("lora_dropout", 0.0)), rslora=bool(raw.get("use_rslora")),
                      dora=bool(raw.get("use_dora")), bias=raw.get("bias", "none"))


def _expected_shapes(model: nn.Module, config: LoRAConfig, directory: Path) -> dict[str, tuple]:
    """PEFT key -> shape that an adapter under `config` must have on this model (model unchanged)."""
    layers = lora_layers(model)
    if layers:
        bases = {name: layer.base_layer for name, layer in layers.items()}
    else:
        try:
            names = resolve_targets(model, config.targets)
        except ValueError as e:
            raise ValueError(f"adapter in {directory} does not fit the model: {e}") from None
        linears = candidate_linears(model)
        bases = {name: linears[name] for name in names}
    shapes = {}
    for name, base in bases.items():
        out_features, in_features = base.weight.shape
        shapes[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (config.r, in_features)
        shapes[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (out_features, config.r)
        if config.dora:
            shapes[f"{PEFT_PREFIX}{name}.lora_magnitude_vector"] = (out_features,)
        if base.bias is not None and config.bias != "none":
            shapes[f"{PEFT_PREFIX}{name}.base_layer.bias"] = tuple(base.bias.shape)
    if config.bias == "all":  # every other bias of the model too (LayerNorm shifts included)
        for name, p in model.named_parameters():
            module = name.rpartition(".")[0].removesuffix(".base_layer")
            if name.endswith(".bias") and module not in bases:
                shapes[_peft_key(name)] = tuple(p.shape)
    return shapes


def load_adapter(model: nn.Module, directory) -> nn.Module:
    """Load an adapter directory onto the model: adds the adapters if the model has none, checks
    that config, keys and shapes match before changing anything, then copies the tensors in."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("the model's adapters are merged; unmerge_lora(model) before loading new ones")
    current = getattr(model, "lora_config", None)
    if lora_layers(model) and current is not None:
        for field in ("r", "alpha", "rslora", "dora"):
            if getattr(current, field) != getattr(config, field):
                raise ValueError(f"adapter {field}={getattr(config, field)!r} does not match the model's "
                                 f"adapters ({field}={getattr(current, field)!r}); load onto a model "
                                 "without adapters instead")
    tensors = load_file(str(directory / WEIGHTS_NAME))
    expected = _expected_shapes(model, config, directory)
    # a bias left out keeps the model's value (PEFT itself writes none for bias="lora_only")
    problems = [f"missing {k}" for k in expected if k not in tensors and not k.endswith(".bias")]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} has shape {tuple(t.shape)} in the file but {expected[k]} in the model"
                 for k, t in tensors.items() if k in expected and tuple(t.shape) != expected[k]]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} problems)" if len(problems) > 4 else "")
        raise ValueError(f"adapter in {directory} does not match the model: {shown}")
    if not lora_layers(model):
        apply_lora(model, config.targets, config.r, config.alpha, config.dropout,
                   config.rslora, config.dora, config.bias)
    params = {_peft_key(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key].copy_(tensor)
    return model
