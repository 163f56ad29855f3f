"""The tokenizer read from a GGUF file against `tokenizers`, the referee.

The referee is built here straight from the GGUF metadata (vocabulary, merges, control tokens)
with SmolLM2's pre-tokenizer as its tokenizer.json spells it, independent of minilm's
`to_hf`: Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)], a BPE
model without an unknown token. The small synthetic GGUF tests need no download.
"""
import os
import re
import sysconfig

import pytest
from hypothesis import given, strategies as st

from minilm.tokenizer.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
from minilm.formats.gguf_tokenizer import (chat_template_from_gguf, open_gguf,  # noqa: E402
                                           tokenizer_from_gguf)

STDLIB = sysconfig.get_paths()["stdlib"]
# Single bytes SmolLM2's vocabulary has no token for: six control bytes, two UTF-8 lead bytes of
# unassigned planes (U+40000-U+BFFFF), and the 13 bytes that never occur in UTF-8.
SMOLLM2_MISSING = bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)])
PROSE = ("It's the tokenizer's job, and we'll see it's done right: they'd said "
         "\"don't split numbers like 3.14159, 1,000,000 or 2024-11-30\" - yet SmolLM2 does, digit "
         "by digit.  Ünïcödé, naïve café, 東京, Привет, 🙂 and tabs\tor\r\n"
         "CRLF newlines.\n\n")
CODE_WITH_NUMBERS = "x = 12345\ny = 0x1F + 1e-5 * 3.0\nfor i in range(10):\n    z[i] = 42  # 7\n"


@pytest.fixture(scope="session")
def reader(smollm2_gguf_path):
    return open_gguf(smollm2_gguf_path)


@pytest.fixture(scope="session")
def tok(reader):
    return tokenizer_from_gguf(reader)


@pytest.fixture(scope="session")
def referee(reader):
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    strings = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    hf = tokenizers.Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(strings)}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s, t in zip(strings, types) if t == 3])
    return hf


def stdlib_text(names):
    texts = []
    for name in names:
        with open(os.path.join(STDLIB, name), encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return "".join(texts)


def referee_ids(referee, text):
    return referee.encode(text, add_special_tokens=False).ids


# ------------------------------------------------------------------ the vocabulary
def test_metadata_becomes_the_tokenizer(tok, reader):
    assert tok.vocab_size == 49152 and len(tok.merges) == 48900
    controls = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert controls.items() <= tok.special_tokens.items() and len(tok.special_tokens) == 17
    for key, name in [("bos", "<|im_start|>"), ("eos", "<|im_end|>"), ("padding", "<|im_end|>"),
                      ("unknown", "<|endoftext|>")]:
        assert reader.fields[f"tokenizer.ggml.{key}_token_id"].contents() == tok.special_tokens[name]
    assert tok.missing_bytes == SMOLLM2_MISSING
    assert tok._ordered  # the fast word encoder applies
    template = chat_template_from_gguf(reader)
    assert "<|im_start|>" in template and "named SmolLM, trained by Hugging Face" in template


# ------------------------------------------------------------------ identical ids
def test_same_ids_as_referee_on_stdlib_source(tok, referee):
    text = stdlib_text(["textwrap.py", "fractions.py", "bisect.py", "colorsys.py", "shlex.py"])
    assert tok.encode_ordinary(text) == referee_ids(referee, text)


def test_same_ids_as_referee_on_prose_and_numbers(tok, referee):
    for text in [PROSE, CODE_WITH_NUMBERS, stdlib_text(["LICENSE.txt"])]:
        assert tok.encode(text) == referee_ids(referee, text)
    # Every digit on its own, after the space that leads it.
    assert [tok.decode([i]) for i in tok.encode("x = 12345")] == ["x", " =", " ", "1", "2", "3", "4", "5"]


# Random Unicode (no lone surrogates: the library takes only valid strings), with the bytes the
# vocabulary lacks and digit / whitespace / apostrophe boundaries drawn often.
edge_text = st.text(alphabet="\x04\x06\x13\x1d a1\t\n'sé²٣\U00050000(", max_size=40)


@given(st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=60), edge_text))
def test_same_ids_as_referee_on_any_text(tok, referee, text):
    assert tok.encode(text) == referee_ids(referee, text)


@given(st.data())
def test_same_decode_as_referee(tok, referee, data):
    # Any ids, or the high single bytes, which make invalid UTF-8 (each spelled U+FFFD) often.
    high_bytes = [i for i in tok.byte_id[0x80:] if i is not None]
    ids = data.draw(st.lists(st.integers(0, 49151) | st.sampled_from(high_bytes), max_size=30))
    assert tok.decode(ids) == referee.decode(ids, skip_special_tokens=False)


@given(st.binary(max_size=40) | st.lists(st.sampled_from(SMOLLM2_MISSING + b"ab1 "), max_size=12).map(bytes))
def test_bytes_without_a_token_are_dropped_like_the_referee(tok, data):
    # Dropped before the merges, so their neighbours may merge: "(\x04)" encodes as "()".
    assert tok.decode_bytes(tok.encode_bytes(data)) == bytes(b for b in data if b not in SMOLLM2_MISSING)
    assert tok.encode("(\x04)") == tok.encode("()") == [tok.strings.index("()")]


def test_special_tokens_only_when_allowed(tok, referee):
    text = "<|im_start|>user\nhi<|im_end|>\n"
    with pytest.raises(ValueError, match=re.escape("special token '<|im_start|>'")):
        tok.encode(text)
    ids = tok.encode(text, allowed_special={"<|im_start|>", "<|im_end|>"})
    assert ids == referee_ids(referee, text) and ids[0] == 1 and ids[-2] == 2
    assert not set(tok.encode_ordinary(text)) & set(tok.special_tokens.values())


def test_hf_and_minilm_files_round_trip(tok, referee, tmp_path):
    tok.save_hf(tmp_path / "tokenizer.json")
    again = Tokenizer.from_hf(tmp_path / "tokenizer.json")
    assert again.to_dict() == tok.to_dict()
    text = PROSE + CODE_WITH_NUMBERS
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids == referee_ids(referee, text)
    tok.save(tmp_path / "tok.json")
    assert Tokenizer.load(tmp_path / "tok.json").encode(text) == tok.encode(text)


# ------------------------------------------------------------------ a small GGUF written here
def write_gguf(path, tok, model="gpt2", pre="gpt-2"):
    """Write `tok` as a GGUF tokenizer, the way llama.cpp's converter does (no tensors)."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tok.strings)
    special_ids = set(tok.special_tokens.values())
    writer.add_token_types([3 if i in special_ids else 1 for i in range(tok.vocab_size)])
    writer.add_token_merges([f"{tok.strings[a]} {tok.strings[b]}" for a, b in tok.merges])
    writer.add_chat_template("{{ messages }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def small_tok():
    return Tokenizer.train([stdlib_text(["textwrap.py"])], 400,
                           special_tokens=("<|endoftext|>", "<|im_end|>"))


def test_a_written_gguf_reads_back_as_the_same_tokenizer(small_tok, tmp_path):
    write_gguf(tmp_path / "tok.gguf", small_tok)
    assert tokenizer_from_gguf(tmp_path / "tok.gguf").to_dict() == small_tok.to_dict()
    assert chat_template_from_gguf(str(tmp_path / "tok.gguf")) == "{{ messages }}"


@pytest.mark.parametrize("model, pre, message", [
    ("llama", "default", "not byte-level BPE"), ("gpt2", "qwen2", "pre-tokenizer 'qwen2'")])
def test_tokenizers_it_cannot_read_are_refused(small_tok, tmp_path, model, pre, message):
    write_gguf(tmp_path / "tok.gguf", small_tok, model, pre)
    with pytest.raises(ValueError, match=message):
        tokenizer_from_gguf(tmp_path / "tok.gguf")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        tokenizer_from_gguf(tmp_path / "absent.gguf")
