"""The tokenizer and chat template stored in a GGUF file, as a minilm `Tokenizer`.

llama.cpp's GGUF format keeps the tokenizer in the file's metadata, next to the weights:

    tokenizer.ggml.model       "gpt2": byte-level BPE, the only kind read here
    tokenizer.ggml.pre         llama.cpp's name for the split before BPE ("smollm": every digit
                               on its own, then GPT-2's pattern; see minilm.tokenizer.bpe.SMOLLM_PATTERN)
    tokenizer.ggml.tokens      each token's string in GPT-2's byte alphabet, in id order
    tokenizer.ggml.token_type  1 normal, 3 control (<|im_start|>, <|im_end|>, <|endoftext|>, ...)
    tokenizer.ggml.merges      "left right" strings, in rank order
    tokenizer.chat_template    the Jinja template that writes a conversation as text

Control tokens become the tokenizer's special tokens: inserted by id, never produced by BPE,
refused in ordinary text unless allowed. The bos / eos / unknown / padding ids name tokens that
are already there and change nothing in encoding: SmolLM2's unknown id 0 is <|endoftext|>, but
a `tokenizers` BPE model built without an unknown token (as transformers' GGUF loader builds
it) drops a byte the vocabulary lacks, and so do we (see minilm.tokenizer.tokenizer). The reader is the
format's own library, `gguf` (GGUFReader).
"""

from minilm.formats.gguf import gguf_field, open_gguf
from minilm.tokenizer.tokenizer import Tokenizer

# llama.cpp's pre-tokenizer names -> our split patterns (minilm.tokenizer.bpe.PATTERNS)
PRE_TOKENIZERS = {"smollm": "smollm", "gpt-2": "gpt2"}
NORMAL, CONTROL = 1, 3  # tokenizer.ggml.token_type values (llama.cpp's LLAMA_TOKEN_TYPE_*)


def tokenizer_from_gguf(source) -> Tokenizer:
    """The byte-level BPE tokenizer of a GGUF file (a path, or an open gguf.GGUFReader)."""
    reader = open_gguf(source)
    path = reader.data.filename
    model = gguf_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer model {model!r} is not byte-level BPE ('gpt2'); "
                         "minilm reads only that kind")
    pre = gguf_field(reader, "tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{path}: pre-tokenizer {pre!r} is not one minilm knows "
                         f"({', '.join(sorted(PRE_TOKENIZERS))}); add its split to minilm.tokenizer.bpe.PATTERNS")
    strings = gguf_field(reader, "tokenizer.ggml.tokens")
    token_types = gguf_field(reader, "tokenizer.ggml.token_type")
    unknown = sorted({t for t in token_types if t not in (NORMAL, CONTROL)})
    if unknown:
        raise ValueError(f"{path}: token types {unknown} (beyond normal 1 and control 3) are not supported")
    specials = {s: i for i, (s, t) in enumerate(zip(strings, token_types)) if t == CONTROL}
    token_id = {s: i for i, s in enumerate(strings)}
    merges = [tuple(token_id[part] for part in merge.split(" "))
              for merge in gguf_field(reader, "tokenizer.ggml.merges")]
    return Tokenizer(strings, merges, specials, PRE_TOKENIZERS[pre])


def chat_template_from_gguf(source) -> str:
    """The Jinja chat template of a GGUF file (a path, or an open gguf.GGUFReader)."""
    reader = open_gguf(source)
    return gguf_field(reader, "tokenizer.chat_template")
