"""The tokenizer and chat template stored in a GGUF file, as a minilm `Tokenizer`.

llama.cpp's GGUF format keeps the tokenizer in the file's metadata, next to the weights:

    tokenizer.ggml.model       "gpt2": byte-level BPE, the only kind read here
    tokenizer.ggml.pre         llama.cpp's name for the split before BPE ("smollm": every digit
                               on its own, then GPT-2's pattern; see minilm.bpe.SMOLLM_PATTERN)
    tokenizer.ggml.tokens      each token's string in GPT-2's byte alphabet, in id order
    tokenizer.ggml.token_type  1 normal, 3 control (<|im_start|>, <|im_end|>, <|endoftext|>, ...)
    tokenizer.ggml.merges      "left right" strings, in rank order
    tokenizer.chat_template    the Jinja template that writes a conversation as text

Control tokens become the tokenizer's special tokens: inserted by id, never produced by BPE,
refused in ordinary text unless allowed. The bos / eos / unknown / padding ids name tokens that
are already there and change nothing in encoding: SmolLM2's unknown id 0 is <|endoftext|>, but
a `tokenizers` BPE model built without an unknown token (as transformers' GGUF loader builds
it) drops a byte the vocabulary lacks, and so do we (see minilm.tokenizer). The reader is the
format's own library, `gguf` (GGUFReader).
"""
import os

from minilm.tokenizer import Tokenizer

# llama.cpp's pre-tokenizer names -> our split patterns (minilm.bpe.PATTERNS)
PRE_TOKENIZERS = {"smollm": "smollm", "gpt-2": "gpt2"}
NORMAL, CONTROL = 1, 3  # tokenizer.ggml.token_type values (llama.cpp's LLAMA_TOKEN_TYPE_*)


def open_gguf(source):
    """(reader, path) for a GGUF path or an open `gguf.GGUFReader`. Opening maps the file and
    parses all its metadata, which takes seconds: pass the reader on to read it once."""
    import gguf
    if isinstance(source, gguf.GGUFReader):
        return source, source.data.filename
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no GGUF file at {source}")
    return gguf.GGUFReader(source), source


def _metadata(reader, key, path):
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"{path}: the GGUF metadata has no {key}, which minilm needs here")
    return field.contents()


def tokenizer_from_gguf(source) -> Tokenizer:
    """The byte-level BPE tokenizer of a GGUF file (a path, or an open gguf.GGUFReader)."""
    reader, path = open_gguf(source)
    model = _metadata(reader, "tokenizer.ggml.model", path)
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer model {model!r} is not byte-level BPE ('gpt2'); "
                         "minilm reads only that kind")
    pre = _metadata(reader, "tokenizer.ggml.pre", path)
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: pre-tokenizer {pre!r} is not one minilm knows "
                         f"({', '.join(sorted(PRE_TOKENIZERS))}); add its split to minilm.bpe.PATTERNS")
    strings = _metadata(reader, "tokenizer.ggml.tokens", path)
    token_types = _metadata(reader, "tokenizer.ggml.token_type", path)
    unknown = sorted({t for t in token_types if t not in (NORMAL, CONTROL)})
    if unknown:
        raise ValueError(f"{path}: token types {unknown} (beyond normal 1 and control 3) are not supported")
    specials = {s: i for i, (s, t) in enumerate(zip(strings, token_types)) if t == CONTROL}
    token_id = {s: i for i, s in enumerate(strings)}
    merges = [tuple(token_id[part] for part in merge.split(" "))
              for merge in _metadata(reader, "tokenizer.ggml.merges", path)]
    return Tokenizer(strings, merges, specials, PRE_TOKENIZERS[pre])


def chat_template_from_gguf(source) -> str:
    """The Jinja chat template of a GGUF file (a path, or an open gguf.GGUFReader)."""
    reader, path = open_gguf(source)
    return _metadata(reader, "tokenizer.chat_template", path)
