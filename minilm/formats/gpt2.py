"""Hugging Face GPT-2 interchange: read a GPT2LMHeadModel state dict, write ours in its layout.

Our module names are GPT-2's, so the only real difference is Hugging Face's Conv1D: it stores the
weight as (in_features, out_features), the transpose of nn.Linear's (out, in). Everything else is
copied as is. Buffers some checkpoints carry (`attn.bias`, `attn.masked_bias`: the causal mask)
are recomputed by us and skipped. Local files only; nothing is downloaded.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from minilm.config import ModelConfig

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # not ".attn.c_attn.bias"


def _read_state_dict(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; give a local .safetensors or .bin GPT-2 checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects


def _hf_config(path: Path) -> dict:
    """n_head cannot be read off the weights; take it from a config.json beside them if there is one."""
    config_file = path.parent / "config.json"
    return json.loads(config_file.read_text()) if config_file.exists() else {}


def load_hf_gpt2(cls, path_or_state_dict, **config_overrides):
    hf_config = {}
    if isinstance(path_or_state_dict, (str, Path)):
        path = Path(path_or_state_dict)
        if path.is_dir():
            path = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()),
                        path / "model.safetensors")
        state = _read_state_dict(path)
        hf_config = _hf_config(path)
    else:
        state = dict(path_or_state_dict)
    # GPT2Model checkpoints lack the "transformer." prefix that GPT2LMHeadModel's carry.
    state = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
             for k, v in state.items() if not k.endswith(SKIPPED_SUFFIXES)}
    if "transformer.wte.weight" not in state:
        raise ValueError("not a GPT-2 state dict: no 'transformer.wte.weight' key")
    vocab_size, n_embd = state["transformer.wte.weight"].shape
    n_layer = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.h."))
    config = ModelConfig(
        vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer,
        block_size=state["transformer.wpe.weight"].shape[0],
        n_head=hf_config.get("n_head", max(1, n_embd // 64)),  # GPT-2 uses 64-wide heads
        bias="transformer.h.0.attn.c_attn.bias" in state, norm_eps=hf_config.get("layer_norm_epsilon", 1e-5),
    )
    config = replace(config, **config_overrides)
    model = cls(config)
    ours = {k: (v.t() if k.endswith(CONV1D_SUFFIXES) else v) for k, v in state.items()}
    ours.setdefault("lm_head.weight", ours["transformer.wte.weight"])  # tied; often not saved
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise ValueError(f"GPT-2 state dict does not match the model: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    return model


def to_hf_state_dict(model) -> dict:
    """Our weights in GPT2LMHeadModel's layout; tensors are copies, so saving them is safe."""
    if model.config.position != "learned":
        raise ValueError(f"GPT-2's format has a learned position table; this model uses "
                         f"position={model.config.position!r}, which it cannot express")
    gpt2 = ModelConfig(n_head=model.config.n_head, n_embd=model.config.n_embd)  # GPT-2's choices
    other = [f"{k}={getattr(model.config, k)!r}" for k in ("norm", "mlp", "resolved_n_kv_head", "resolved_mlp_hidden", "tie_embeddings")
             if getattr(model.config, k) != getattr(gpt2, k)]
    if other:
        raise ValueError(f"GPT-2's format cannot express {', '.join(other)}; export a Llama-family "
                         "model with minilm.formats.llama_hf.save_hf_llama")
    return {k: (v.t() if k.endswith(CONV1D_SUFFIXES) else v).detach().clone().contiguous()
            for k, v in model.state_dict().items()}


def hf_config_dict(config: ModelConfig) -> dict:
    """A config.json that transformers' GPT2Config reads, for `save_hf_gpt2`."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "activation_function": "gelu_new", "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": True,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
    }


def save_hf_gpt2(model, directory) -> Path:
    """Write model.safetensors + config.json in Hugging Face's layout; returns the directory."""
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_state_dict(model)
    state.pop("lm_head.weight")  # tied to wte, as transformers saves it
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_dict(model.config), indent=2))
    return directory
