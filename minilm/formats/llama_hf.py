"""Hugging Face Llama directories (config.json + safetensors) in and out of our decoder.

A LlamaForCausalLM and our GPT with norm="rmsnorm", mlp="swiglu", position="rope" compute the same
function; only the names differ, and we fuse what Hugging Face keeps apart:

    Hugging Face (per layer i: model.layers.{i}.)        ours (transformer.h.{i}.)
    input_layernorm.weight                               ln_1.weight
    self_attn.q_proj, k_proj, v_proj .weight (rows)      attn.c_attn.weight = [q ; k ; v]
    self_attn.o_proj.weight                              attn.c_proj.weight
    post_attention_layernorm.weight                      ln_2.weight
    mlp.gate_proj, up_proj .weight (rows)                mlp.c_fc.weight = [gate ; up]
    mlp.down_proj.weight                                 mlp.c_proj.weight
    model.embed_tokens.weight, model.norm.weight         transformer.wte.weight, transformer.ln_f.weight
    lm_head.weight (absent when tied)                    lm_head.weight

Both use the half-split rotary pairing (`rotate_half`), so no row is permuted. Local files only.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from minilm.config import ModelConfig
from minilm.model.gpt import GPT

LLAMA_CHOICES = dict(norm="rmsnorm", mlp="swiglu", position="rope")  # what the format can hold


# ---------------------------------------------------------------- config.json <-> ModelConfig
def llama_config_from_hf(hf: dict) -> ModelConfig:
    """A ModelConfig from a Llama config.json (transformers 4.x or 5.x spelling of the rope base)."""
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"config.json has model_type {hf['model_type']!r}; only 'llama' is supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not Llama's silu; only SwiGLU MLPs are supported")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ValueError(f"rope scaling {rope or hf['rope_scaling']} is not supported; only plain rotary "
                         "positions (rope_type 'default') load")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise ValueError("attention_bias and mlp_bias differ; our decoder has one bias switch for every Linear")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise ValueError(f"head_dim {hf['head_dim']} is not hidden_size / num_attention_heads "
                         f"({n_embd // n_head}); such checkpoints are not supported")
    return ModelConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
        n_kv_head=hf.get("num_key_value_heads") or n_head, mlp_hidden=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_base=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        bias=hf.get("attention_bias", False), tie_embeddings=hf.get("tie_word_embeddings", False),
        **LLAMA_CHOICES)


def hf_config_from_llama(config: ModelConfig) -> dict:
    """The config.json that transformers' LlamaConfig reads for our config."""
    other = [f"{k}={getattr(config, k)!r}" for k, v in LLAMA_CHOICES.items() if getattr(config, k) != v]
    if other:
        raise ValueError(f"a Llama checkpoint needs norm='rmsnorm', mlp='swiglu', position='rope'; this model "
                         f"has {', '.join(other)} (export GPT-2-style models with minilm.formats.gpt2.save_hf_gpt2)")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": config.vocab_size, "max_position_embeddings": config.block_size,
        "hidden_size": config.n_embd, "intermediate_size": config.resolved_mlp_hidden, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.resolved_n_kv_head, "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": config.bias, "mlp_bias": config.bias, "torch_dtype": "float32",
        # transformers 5 reads rope_parameters, 4.x reads rope_theta
        "rope_theta": config.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
    }


# ---------------------------------------------------------------- state dicts
def _block_names(i: int) -> list[tuple[str, list[str]]]:
    """(our name, its Hugging Face parts in row order) for block i, without the .weight/.bias suffix."""
    hf = f"model.layers.{i}."
    return [
        ("ln_1", [hf + "input_layernorm"]),
        ("attn.c_attn", [hf + "self_attn.q_proj", hf + "self_attn.k_proj", hf + "self_attn.v_proj"]),
        ("attn.c_proj", [hf + "self_attn.o_proj"]),
        ("ln_2", [hf + "post_attention_layernorm"]),
        ("mlp.c_fc", [hf + "mlp.gate_proj", hf + "mlp.up_proj"]),
        ("mlp.c_proj", [hf + "mlp.down_proj"]),
    ]


def _name_map(config: ModelConfig) -> list[tuple[str, list[str]]]:
    """Every (our tensor, its Hugging Face tensors) pair; a fused tensor is its parts stacked by rows."""
    pairs = [("transformer.wte.weight", ["model.embed_tokens.weight"]),
             ("transformer.ln_f.weight", ["model.norm.weight"])]
    linears = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for i in range(config.n_layer):
        for ours, parts in _block_names(i):
            suffixes = [".weight", ".bias"] if config.bias and ours in linears else [".weight"]
            pairs += [(f"transformer.h.{i}.{ours}{s}", [p + s for p in parts]) for s in suffixes]
    if not config.tie_embeddings:
        pairs.append(("lm_head.weight", ["lm_head.weight"]))
    return pairs


def state_dict_from_hf_llama(hf_state: dict, config: ModelConfig) -> dict:
    """Our state dict from a LlamaForCausalLM's (or a LlamaModel's, without the "model." prefix)."""
    hf_state = {(k if k.startswith(("model.", "lm_head.")) else "model." + k): v for k, v in hf_state.items()
                if not k.endswith("rotary_emb.inv_freq")}  # a buffer older checkpoints carry; recomputed
    ours = {}
    for name, parts in _name_map(config):
        missing = [p for p in parts if p not in hf_state]
        if missing:
            hint = " (tie_word_embeddings is false but there is no lm_head)" if name == "lm_head.weight" else ""
            raise ValueError(f"not a Llama checkpoint of this shape: {missing[0]} is missing{hint}")
        ours[name] = torch.cat([hf_state[p] for p in parts]) if len(parts) > 1 else hf_state[parts[0]]
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


def state_dict_to_hf_llama(our_state: dict, config: ModelConfig) -> dict:
    """A LlamaForCausalLM state dict from ours (copies; lm_head.weight too when tied, as its
    state_dict() has it): c_attn splits into q, k, v by rows, c_fc into gate and up."""
    q, kv, H = config.n_head * config.head_dim, config.resolved_n_kv_head * config.head_dim, config.resolved_mlp_hidden
    split_rows = {"attn.c_attn": [q, kv, kv], "mlp.c_fc": [H, H]}
    hf = {}
    for name, parts in _name_map(config):
        fused = next((sizes for key, sizes in split_rows.items() if f".{key}." in name), None)
        tensors = our_state[name].split(fused) if fused else [our_state[name]]
        hf.update({p: t.detach().clone().contiguous() for p, t in zip(parts, tensors, strict=True)})
    if config.tie_embeddings:
        hf["lm_head.weight"] = hf["model.embed_tokens.weight"]
    return hf


# ---------------------------------------------------------------- directories
def _read_weights(directory: Path) -> dict:
    from safetensors.torch import load_file
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():  # shards: weight_map names the file holding each tensor
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {name: t for shard in shards for name, t in load_file(str(directory / shard)).items()}
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json; give a "
                            "Hugging Face Llama directory with safetensors weights")


def load_hf_llama(directory) -> GPT:
    """Our GPT (fp32) from a local Hugging Face Llama directory: config.json + safetensors."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no config.json; give a local Hugging Face Llama directory")
    config = llama_config_from_hf(json.loads((directory / "config.json").read_text()))
    model = GPT(config)
    model.load_state_dict(state_dict_from_hf_llama(_read_weights(directory), config))
    return model.eval()


def save_hf_llama(model: GPT, directory) -> Path:
    """Write config.json + model.safetensors that transformers' LlamaForCausalLM loads; returns the directory."""
    from safetensors.torch import save_file
    directory = Path(directory)
    hf_config = hf_config_from_llama(model.config)  # refuses a non-Llama model before writing anything
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict_to_hf_llama(model.state_dict(), model.config)
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # shared with the embedding; save_pretrained leaves it out too
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    return directory
