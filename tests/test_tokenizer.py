"""Byte-level BPE: our trainer and encoder against the `tokenizers` library, and round trips."""
import json
import os
import random
import sysconfig

import pytest
import regex
from hypothesis import given, strategies as st

from minilm.tokenizer import bpe
from minilm.tokenizer.tokenizer import Tokenizer, TokenizerFileError

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ("<|endoftext|>", "<|task|>", "<|code|>", "<|buggy|>", "<|explain|>")
STDLIB = sysconfig.get_paths()["stdlib"]


def stdlib_texts(n_bytes, skip=0):
    """Real Python: stdlib modules in sorted order, about n_bytes of them after `skip` bytes."""
    texts, seen = [], 0
    for name in sorted(os.listdir(STDLIB)):
        if name.endswith(".py"):
            with open(os.path.join(STDLIB, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            seen += len(text)
            if seen > skip:
                texts.append(text)
            if seen > skip + n_bytes:
                break
    return texts


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(stdlib_texts(150_000), 700, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save_hf(path)
    return tokenizers.Tokenizer.from_file(str(path))


# ------------------------------------------------------------------ training: merge for merge
@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_trainer_matches_tokenizers_on_stdlib(pattern, tmp_path):
    texts = stdlib_texts(300_000)
    ours = Tokenizer.train(texts, 1200, special_tokens=SPECIALS, pattern=pattern)
    theirs = Tokenizer.train(texts, 1200, special_tokens=SPECIALS, pattern=pattern, backend="tokenizers")
    assert len(ours.merges) == 1200 - 256 - len(SPECIALS)
    assert ours.merges == theirs.merges
    assert ours.strings == theirs.strings
    ours.save(tmp_path / "ours.json")
    theirs.save(tmp_path / "theirs.json")
    assert (tmp_path / "ours.json").read_bytes() == (tmp_path / "theirs.json").read_bytes()


tie_heavy_texts = st.lists(st.text(alphabet="ab c\n'é1", max_size=60), max_size=6)


@given(texts=tie_heavy_texts, extra=st.integers(0, 40), min_frequency=st.sampled_from([0, 2, 3]),
       pattern=st.sampled_from(["gpt2", "cl100k"]))
def test_trainer_matches_tokenizers_on_tie_heavy_corpora(texts, extra, min_frequency, pattern):
    vocab_size = 256 + 2 + extra
    specials = ("<|endoftext|>", "ab")  # a special that is also ordinary text in the corpus
    options = dict(special_tokens=specials, pattern=pattern, min_frequency=min_frequency)
    ours = Tokenizer.train(texts, vocab_size, **options)
    theirs = Tokenizer.train(texts, vocab_size, backend="tokenizers", **options)
    assert ours.to_dict() == theirs.to_dict()


@given(texts=tie_heavy_texts, extra=st.integers(0, 40), min_frequency=st.sampled_from([0, 2]))
def test_heap_trainer_matches_recount_reference(texts, extra, min_frequency):
    word_counts = bpe.count_words(texts, "gpt2", SPECIALS)
    args = (word_counts, 256 + len(SPECIALS) + extra, SPECIALS, min_frequency)
    assert bpe.train_bpe(*args) == bpe.train_bpe_reference(*args)


def test_train_from_files_and_progress(tmp_path, capsys):
    texts = stdlib_texts(30_000)
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"{i}.py")
        paths[-1].write_text(text, encoding="utf-8")
    from_files = Tokenizer.train_from_files(paths, 400, progress=True)
    assert from_files.to_dict() == Tokenizer.train(iter(texts), 400).to_dict()
    assert f"{400 - 257}/{400 - 257} merges" in capsys.readouterr().err


def test_training_rejects_bad_settings():
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["abc"], 100)
    with pytest.raises(ValueError, match="backend"):
        Tokenizer.train(["abc"], 300, backend="sentencepiece")
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer.train(["abc"], 300, special_tokens=("<|a|>", "<|a|>"))


# ------------------------------------------------------------------ encoding: same ids as tokenizers
@given(text=st.text(max_size=300))
def test_encode_matches_tokenizers_on_any_text(tok, hf_tok, text):
    assert tok.encode(text, allowed_special="all") == hf_tok.encode(text).ids


@given(pieces=st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(alphabet="<|>ab \n", max_size=8))))
def test_encode_matches_tokenizers_around_special_tokens(tok, hf_tok, pieces):
    text = "".join(pieces)
    assert tok.encode(text, allowed_special="all") == hf_tok.encode(text).ids


def test_encode_matches_tokenizers_on_held_out_code(tok, hf_tok):
    for text in stdlib_texts(100_000, skip=400_000):
        assert tok.encode(text) == hf_tok.encode(text).ids
    assert tok.encode_batch(["x = 1\n", "def f(): pass"], backend="tokenizers") == \
        tok.encode_batch(["x = 1\n", "def f(): pass"])


def test_cl100k_encoding_matches_tokenizers(tmp_path):
    tok = Tokenizer.train(stdlib_texts(50_000), 500, pattern="cl100k")
    tok.save_hf(tmp_path / "t.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "t.json"))
    text = "".join(stdlib_texts(20_000, skip=100_000)) + "\r\n  12345 DON'T ſ'S\n\n\t x"
    assert tok.encode(text) == hf.encode(text).ids


@given(text=st.text(st.characters(blacklist_categories=("Cs",)))
       | st.text(alphabet="a1 \n\t'sé²٣", max_size=20))
def test_smollm_split_is_digits_then_byte_level(text):
    """SmolLM2's tokenizer.json splits with Digits(individual_digits=True), then ByteLevel's
    GPT-2 regex on each stretch; our single "smollm" pattern must cut the same words."""
    referee = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    chars = bpe.bytes_to_unicode()
    ours = ["".join(chars[b] for b in word.encode()) for word in
            regex.findall(bpe.resolve_pattern("smollm"), text)]
    assert ours == [word for word, _ in referee.pre_tokenize_str(text)]


def test_smollm_encoding_matches_tokenizers(tmp_path):
    tok = Tokenizer.train(stdlib_texts(50_000), 500, pattern="smollm")
    tok.save_hf(tmp_path / "t.json")
    assert Tokenizer.from_hf(tmp_path / "t.json").pattern == bpe.SMOLLM_PATTERN
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "t.json"))
    text = "".join(stdlib_texts(20_000, skip=100_000)) + "x = 12345  67\n\t 8 a1b2"
    assert tok.encode(text) == hf.encode(text).ids


@given(text=st.text(alphabet="ab() \x04é", max_size=30))
def test_bytes_without_a_token_are_dropped_like_tokenizers(text, tmp_path_factory):
    """A vocabulary made elsewhere may lack single bytes (SmolLM2's lacks 0x04, 0xF1, ...):
    they are dropped before the merges, as `tokenizers` does with no unknown token."""
    missing = b"\x04\xc3"  # 0xC3 is é's first byte; its second, 0xA9, stays
    strings, _ = bpe.initial_vocab(("<|endoftext|>",))
    strings = [s for s in strings if s not in {bpe.bytes_to_unicode()[b] for b in missing}] + ["()"]
    tok = Tokenizer(strings, [(strings.index("("), strings.index(")"))], {"<|endoftext|>": 0})
    assert tok.missing_bytes == missing
    path = tmp_path_factory.mktemp("missing") / "tokenizer.json"
    tok.save_hf(path)
    assert tok.encode(text) == tokenizers.Tokenizer.from_file(str(path)).encode(text).ids
    data = text.encode()
    assert tok.decode_bytes(tok.encode(text)) == bytes(b for b in data if b not in missing)
    assert tok.encode("(\x04)") == [strings.index("()")]  # a dropped byte's neighbours merge


@given(data=st.binary(max_size=64))
def test_fast_word_encoder_matches_reference(tok, data):
    assert tok.encode_word(data) == tok.encode_word_reference(data)


@given(choices=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=30),
       text=st.text(alphabet="abc \n", max_size=40), shuffle_seed=st.sampled_from([None, 1, 2]))
def test_any_merge_list_encodes_like_tokenizers(choices, text, shuffle_seed, tmp_path_factory):
    """Random merge lists over "abc": strings made twice (rule 5), pairs listed twice, parts
    made after their use. The reference encoder must still match the library exactly."""
    strings, _ = bpe.initial_vocab(("<|endoftext|>",))
    made, merges = ["a", "b", "c"], []
    for i, j in choices:
        left, right = made[i % len(made)], made[j % len(made)]
        merges.append((strings.index(left), strings.index(right)))
        if left + right not in strings:
            strings.append(left + right)
            made.append(left + right)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(merges)
    tok = Tokenizer(strings, merges, {"<|endoftext|>": 0})
    path = tmp_path_factory.mktemp("merges") / "tokenizer.json"
    tok.save_hf(path)
    assert tok.encode(text) == tokenizers.Tokenizer.from_file(str(path)).encode(text).ids


# ------------------------------------------------------------------ decoding: round trips
@given(text=st.text())
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == text


@given(data=st.binary())
def test_decode_bytes_inverts_encode_bytes(tok, data):
    assert tok.decode_bytes(tok.encode_bytes(data)) == data


@given(ids=st.lists(st.integers(0, 699)), seed=st.integers(0, 1000))
def test_stream_decoder_equals_decode(tok, ids, seed):
    """Arbitrary ids (including cut UTF-8), pushed in arbitrary chunks, give decode's text."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(ids) + 1), k=min(len(ids), rng.randint(0, 4))))
    chunks = [ids[start:end] for start, end in zip([0, *cuts], [*cuts, len(ids)])]
    stream = tok.stream_decoder()
    text = "".join(stream.push(chunk) for chunk in chunks) + stream.flush()
    assert text == tok.decode(ids)


def test_stream_decoder_holds_back_split_characters(tok):
    ids = tok.encode("é")
    assert len(ids) == 2  # two byte tokens: the first alone is not a character
    stream = tok.stream_decoder()
    assert stream.push(ids[0]) == ""
    assert stream.push(ids[1]) == "é"


def test_decode_rejects_unknown_ids(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


# ------------------------------------------------------------------ special tokens
def test_special_tokens_never_learned_and_refused_unless_allowed():
    eot = "<|endoftext|>"
    text = f"x = 1{eot}y = 2{eot}" * 200 + "<|endoftext" * 50
    tok = Tokenizer.train([text], 400, special_tokens=SPECIALS)
    assert list(tok.special_tokens.values()) == list(range(len(SPECIALS)))
    special_bytes = [s.encode() for s in SPECIALS]
    for i in range(len(SPECIALS), tok.vocab_size):
        assert not any(s in tok.token_bytes(i) for s in special_bytes)
    with pytest.raises(ValueError, match="special token"):
        tok.encode(f"a{eot}b")
    assert tok.encode(f"a{eot}b", allowed_special={eot}) == tok.encode("a") + [0] + tok.encode("b")
    with pytest.raises(ValueError, match="<|task|>"):
        tok.encode(f"{eot}<|task|>", allowed_special={eot})
    ordinary = tok.encode_ordinary(eot)
    assert len(ordinary) > 1 and not set(ordinary) & set(tok.special_tokens.values())
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode("a", allowed_special={"<|nope|>"})


# ------------------------------------------------------------------ files
def test_save_load_and_hf_round_trips(tok, tmp_path):
    tok.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.to_dict() == tok.to_dict()
    tok.save_hf(tmp_path / "tokenizer.json")
    assert Tokenizer.from_hf(tmp_path / "tokenizer.json").to_dict() == tok.to_dict()
    text = "".join(stdlib_texts(5_000, skip=300_000))
    assert loaded.encode(text) == tok.encode(text)


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s[: len(s) // 2], "not valid JSON"),
    (lambda s: s.replace('"version": 1', '"version": 99'), "version 99"),
    (lambda s: s.replace('"minilm-bpe"', '"other"'), "not a minilm tokenizer"),
    (lambda s: s.replace('"merges"', '"merge"'), "corrupt tokenizer file"),
    (lambda s: json.dumps({**json.loads(s), "merges": [[99999, 0]]}), "corrupt tokenizer file"),
])
def test_corrupt_files_are_rejected_naming_the_file(tok, tmp_path, corrupt, message):
    path = tmp_path / "tok.json"
    tok.save(path)
    path.write_text(corrupt(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


def test_from_hf_rejects_other_models(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="not BPE"):
        Tokenizer.from_hf(path)


# ------------------------------------------------------------------ inspection
def test_inspection_helpers(tok):
    lines = tok.vocab_dump().splitlines()
    assert len(lines) == tok.vocab_size
    assert sum(" -> " in line for line in lines) == len(tok.merges)
    text = "def add(a, b):\n    return a + b\n"
    assert tok.show_tokens(text).count("][") == len(tok.encode(text)) - 1
    assert tok.token_bytes(tok.special_tokens["<|code|>"]) == b"<|code|>"
