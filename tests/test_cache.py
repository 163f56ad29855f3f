"""The converted-base cache (minilm/cache.py): a load served by the cache is the GGUF's own
load, to the bit, and the cache never serves a stale or broken conversion nor stops a load."""
import os

import pytest
import torch

from minilm import cache, pretrained
from minilm.config import ModelConfig
from minilm.formats.gguf import save_gguf
from minilm.model.gpt import GPT
from minilm.tokenizer.tokenizer import Tokenizer

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], 300, special_tokens=("<|endoftext|>", "<|im_end|>"))


def tokenizer_metadata(tok):
    special_ids = set(tok.special_tokens.values())
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": tok.strings,
            "tokenizer.ggml.token_type": [3 if i in special_ids else 1 for i in range(tok.vocab_size)],
            "tokenizer.ggml.merges": [f"{tok.strings[a]} {tok.strings[b]}" for a, b in tok.merges]}


def write_base(path, tok, seed=0, with_tokenizer=True):
    """A small llama GGUF (Q8_0 matrices) with the tokenizer in its metadata."""
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                         mlp="swiglu", mlp_hidden=96, norm="rmsnorm", position="rope", bias=False)
    torch.manual_seed(seed)
    model = GPT(config)
    save_gguf(model, path, tokenizer_metadata=tokenizer_metadata(tok) if with_tokenizer else None, qtype="Q8_0")
    return pretrained.Base(path, "gguf")


def new_process():
    """Forget what this process memoised, as a new process would."""
    pretrained._converted.cache_clear()
    pretrained._open_reader.cache_clear()


def load(base):
    new_process()
    return (pretrained.load_base_model(base), pretrained.load_base_tokenizer(base),
            pretrained.base_config(base), pretrained.describe(base))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    new_process()


def entries(cache_dir):
    return sorted(p.name for p in (cache_dir / "bases").iterdir()) if (cache_dir / "bases").is_dir() else []


def assert_same(loaded, expected):
    (model, tok, config, description), (model0, tok0, config0, description0) = loaded, expected
    state, state0 = model.state_dict(), model0.state_dict()
    assert state.keys() == state0.keys()
    assert all(torch.equal(state[name], state0[name]) for name in state0)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert tok.to_dict() == tok0.to_dict()
    assert (config, description) == (config0, description0)


def test_a_cached_load_is_the_gguf_load(tok, tmp_path, cache_dir, monkeypatch):
    base = write_base(tmp_path / "base.gguf", tok)
    monkeypatch.setenv("MINILM_CACHE", "off")
    expected = load(base)
    assert not cache_dir.exists()  # off writes nothing
    monkeypatch.setenv("MINILM_CACHE", str(cache_dir))
    assert_same(load(base), expected)  # converts and writes the entry
    assert len(entries(cache_dir)) == 1

    def no_gguf(*_):
        raise AssertionError("the GGUF was opened although the cache holds its conversion")
    monkeypatch.setattr(pretrained, "open_gguf", no_gguf)
    loaded = load(base)
    assert_same(loaded, expected)
    ids = torch.tensor([loaded[1].encode("def add(a, b):")])
    assert torch.equal(loaded[0](ids), expected[0](ids))


def test_a_replaced_file_is_converted_again(tok, tmp_path, cache_dir):
    path = tmp_path / "base.gguf"
    first = load(write_base(path, tok, seed=0))
    base = write_base(path, tok, seed=1)  # same name, other weights
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    second = load(base)
    assert not torch.equal(second[0].transformer.h[0].attn.c_attn.weight, first[0].transformer.h[0].attn.c_attn.weight)
    assert len(entries(cache_dir)) == 1  # the old version's entry is gone
    load(write_base(tmp_path / "other.gguf", tok))
    assert len(entries(cache_dir)) == 2  # another file's is not


@pytest.mark.parametrize("damaged", ["model.safetensors", "tokenizer.json"])
def test_an_unreadable_entry_is_converted_again(tok, tmp_path, cache_dir, monkeypatch, damaged):
    base = write_base(tmp_path / "base.gguf", tok)
    expected = load(base)
    (folder,) = (cache_dir / "bases").iterdir()
    # truncated, under a new inode: the loaded model's weights map the old file (safetensors maps
    # it privately), and truncating a mapped file in place would pull the pages from under them
    (folder / "damaged").write_bytes((folder / damaged).read_bytes()[:100])
    os.replace(folder / "damaged", folder / damaged)
    assert_same(load(base), expected)  # read from the GGUF again
    monkeypatch.setattr(pretrained, "open_gguf", lambda *_: pytest.fail("the entry was not rebuilt"))
    assert_same(load(base), expected)


def test_an_unwritable_cache_only_costs_time(tok, tmp_path, monkeypatch):
    base = write_base(tmp_path / "base.gguf", tok)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINILM_CACHE", str(blocker / "cache"))
    try:
        model, tok_loaded, _, _ = load(base)
    finally:
        new_process()
    assert tok_loaded.to_dict() == tok.to_dict() and model.config.vocab_size == tok.vocab_size


def test_a_gguf_without_a_tokenizer_still_gives_its_weights(tok, tmp_path, cache_dir):
    base = write_base(tmp_path / "weights_only.gguf", tok, with_tokenizer=False)
    new_process()
    assert pretrained.load_base_model(base).config.vocab_size == tok.vocab_size
    assert entries(cache_dir) == []  # not a whole base: nothing cached
    with pytest.raises(pretrained.ConfigError, match="cannot read its tokenizer"):
        pretrained.load_base_tokenizer(base)


def test_the_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILM_CACHE", "OFF")
    assert cache.cache_root() is None
    monkeypatch.setenv("MINILM_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    monkeypatch.delenv("MINILM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "minilm"


def test_a_new_converter_converts_again(tok, tmp_path, cache_dir, monkeypatch):
    base = write_base(tmp_path / "base.gguf", tok)
    expected = load(base)
    first = entries(cache_dir)
    monkeypatch.setattr(cache, "_converter_version", lambda: "a fixed reader")
    assert_same(load(base), expected)
    assert len(entries(cache_dir)) == 1 and entries(cache_dir) != first  # converted anew, the old entry gone


def test_a_full_disk_while_writing_the_cache_only_costs_time(tok, tmp_path, cache_dir, monkeypatch):
    from safetensors import SafetensorError

    def full(*_, **__):
        raise SafetensorError("No space left on device (os error 28)")  # how safetensors reports it
    base = write_base(tmp_path / "base.gguf", tok)
    monkeypatch.setenv("MINILM_CACHE", "off")
    expected = load(base)
    monkeypatch.setenv("MINILM_CACHE", str(cache_dir))
    monkeypatch.setattr(cache, "save_weights", full)
    assert_same(load(base), expected)
    assert entries(cache_dir) == []
