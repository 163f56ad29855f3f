"""Properties of the corpus (minilm/data/corpus.py) and the token files and batches (minilm/data/tokens.py).

Most tests build a corpus from a small temporary folder of fake .py files whose contents are
chosen to exercise each rule (duplicates, bad UTF-8, control-token text, test folders); one
quick test runs the real rules on a capped subset of the running Python's stdlib.
"""
import hashlib
import inspect
import itertools
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from minilm.data import tokens as data
from minilm.data.corpus import build_corpus, find_python_files, is_generated, split_of
from minilm.data.sft import SPECIAL_TOKENS
from minilm.data.tokens import EOT, get_batch, iter_eval_batches, load_meta, prepare_tokens, token_dtype
from minilm.tokenizer.tokenizer import Tokenizer
import minilm.data.corpus as corpus_module

def tiny_tokenizer(vocab_size=300):
    """A real minilm Tokenizer, small enough to train in milliseconds."""
    return Tokenizer.train([inspect.getsource(textwrap)], vocab_size, special_tokens=SPECIAL_TOKENS)


def make_tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


FAKE_FILES = {
    **{f"pkg/mod_{i:02d}.py": f"def f{i}(x):\n    return x * {i}  # é\n" * (i + 1)
       for i in range(30)},
    "pkg/copy_of_mod_03.py": "def f3(x):\n    return x * 3  # é\n" * 4,  # duplicate of mod_03
    "latin1.py": "s = 'caf\xe9'\n".encode("latin-1"),
    "empty.py": "\n\n",
    "control.py": "s = '<|endoftext|>'\n",
    "notes.txt": "not python",
    "__pycache__/cached.py": "x = 1\n",
    "tests/test_thing.py": "def test():\n    assert True\n",  # kept: user folders keep tests
}


@pytest.fixture
def fake_root(tmp_path):
    return make_tree(tmp_path / "src", FAKE_FILES)


def test_build_is_deterministic_and_rules_hold(fake_root):
    first, second = build_corpus(fake_root), build_corpus(fake_root)
    assert first.manifest() == second.manifest() and first.hash == second.hash
    paths = [d.path for d in first.documents]
    assert paths == sorted(paths)
    assert first.skipped == {"not_utf8": ["latin1.py"], "empty": ["empty.py"],
                             "control_text": ["control.py"], "duplicate": ["pkg/mod_03.py"]}
    assert "tests/test_thing.py" in paths and not any("__pycache__" in p for p in paths)
    assert "pkg/copy_of_mod_03.py" in paths  # the first in sorted order is the one kept
    for doc in first.documents:
        raw = (fake_root / doc.path).read_bytes()
        assert doc.text == raw.decode("utf-8") and doc.n_bytes == len(raw)
        assert doc.sha256 == hashlib.sha256(raw).hexdigest()


def test_split_is_by_file_and_stable(fake_root, tmp_path):
    corpus = build_corpus(fake_root, val_fraction=0.2)
    train, val = ({d.path for d in corpus.select(s)} for s in ("train", "val"))
    assert train and val and not train & val
    assert train | val == {d.path for d in corpus.documents}
    assert corpus.n_bytes("train") + corpus.n_bytes("val") == corpus.n_bytes()
    # A file's split is a function of its path alone: a corpus of fewer files agrees on it.
    subset = make_tree(tmp_path / "subset", {p: FAKE_FILES[p] for p in sorted(FAKE_FILES)[:12]})
    for doc in build_corpus(subset, val_fraction=0.2).documents:
        if doc.path in train | val:
            assert doc.split == split_of(doc.path, 0.2) == ("val" if doc.path in val else "train")


def test_max_bytes_takes_a_fixed_subset_within_budget(fake_root):
    full = build_corpus(fake_root)
    capped = build_corpus(fake_root, max_bytes=full.n_bytes() // 3)
    assert capped.n_bytes() <= full.n_bytes() // 3 and capped.hash == build_corpus(
        fake_root, max_bytes=full.n_bytes() // 3).hash
    full_docs = {d.path: d for d in full.documents}
    assert all(full_docs[d.path] == d for d in capped.documents)
    assert len(capped.documents) + len(capped.skipped["over_budget"]) == len(full.documents)


def test_small_corpora_get_both_splits_and_bad_input_is_refused(tmp_path):
    two = make_tree(tmp_path / "two", {"a.py": "a = 1\n", "b.py": "b = 2\n"})
    assert {d.split for d in build_corpus(two).documents} == {"train", "val"}
    with pytest.raises(ValueError, match="at least 2"):
        build_corpus(make_tree(tmp_path / "one", {"a.py": "a = 1\n"}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_corpus(tmp_path / "missing")
    with pytest.raises(ValueError, match="max_bytes"):
        build_corpus(two, max_bytes=-1)


def test_file_list_and_single_list_sources(fake_root, tmp_path):
    listing = fake_root / "files.txt"
    listing.write_text("pkg/mod_01.py\n# a comment\npkg/mod_02.py\n\n")
    from_list = build_corpus(listing)
    assert [d.path for d in from_list.documents] == ["mod_01.py", "mod_02.py"]
    from_paths = build_corpus([fake_root / "pkg/mod_02.py", fake_root / "pkg/mod_01.py"])
    assert from_paths.hash == from_list.hash  # the hash depends on paths and bytes only


def test_stdlib_rules_drop_tests_site_packages_and_generated(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "lib", {
        "os.py": "import sys\n", "json/decoder.py": "x = 1\n",
        "test/test_os.py": "t = 1\n", "lib2to3/tests/data.py": "t = 2\n",
        "idlelib/idle_test/t.py": "t = 3\n", "site-packages/pkg.py": "p = 1\n",
        "token.py": "# Auto-generated by Tools/scripts/generate_token.py\nA = 1\n",
        "ast.py": '"""Docs.\n\nNodes\n\n  generated by parsing"""\n',  # not in the header
    })
    monkeypatch.setattr(corpus_module, "stdlib_root", lambda: root)
    corpus = build_corpus(None)
    assert [d.path for d in corpus.documents] == ["ast.py", "json/decoder.py", "os.py"]
    assert corpus.skipped == {"generated": ["token.py"]}
    assert is_generated("# This file is generated by mkstringprep.py. DO NOT EDIT.\n")


def test_capped_real_stdlib():
    corpus = build_corpus(None, max_bytes=100_000)
    assert 0 < corpus.n_bytes() <= 100_000 and corpus.select("train") and corpus.select("val")
    excluded = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    assert not any(excluded & set(d.path.split("/")[:-1]) for d in corpus.documents)
    on_disk = [p.relative_to(corpus_module.stdlib_root()).as_posix()
               for p in find_python_files(corpus_module.stdlib_root(), stdlib_rules=True)]
    assert {d.path for d in corpus.documents} <= set(on_disk)


def test_token_files_round_trip_and_cache(fake_root, tmp_path):
    corpus, tok = build_corpus(fake_root, val_fraction=0.2), tiny_tokenizer()
    logs = []
    tokens = prepare_tokens(corpus, tok, tmp_path / "tok", log=logs.append)
    assert tokens.train.dtype == np.uint16 and tokens.val_bytes == corpus.n_bytes("val")
    for split in ("train", "val"):
        stream = tok.decode(tokens.split(split).tolist())
        assert stream == EOT + "".join(t + EOT for t in corpus.texts(split))

    # Unchanged corpus and tokenizer: reused, nothing is encoded again.
    calls = []
    tok.encode = lambda text, allowed_special=(), _enc=tok.encode: calls.append(1) or _enc(text)
    again = prepare_tokens(corpus, tok, tmp_path / "tok", log=logs.append)
    assert not calls and "reusing" in logs[-1]
    assert np.array_equal(again.train, tokens.train) and again.meta == tokens.meta

    # A different tokenizer: rebuilt, with its ids.
    other = tiny_tokenizer(vocab_size=320)
    rebuilt = prepare_tokens(corpus, other, tmp_path / "tok", log=logs.append)
    assert "tokenizing" in logs[-1] and rebuilt.meta["tokenizer_hash"] != tokens.meta["tokenizer_hash"]
    assert other.decode(rebuilt.train.tolist()) == tok.decode(tokens.train.tolist())
    assert len(rebuilt.train) < len(tokens.train)  # more merges, fewer tokens: new ids were written
    # A truncated file (an interrupted copy) is detected and rebuilt too.
    (tmp_path / "tok" / "val.bin").write_bytes(b"\0\0")
    assert len(prepare_tokens(corpus, other, tmp_path / "tok", log=logs.append).val) == len(rebuilt.val)
    assert "tokenizing" in logs[-1]


def test_token_dtype():
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32


@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 9))
def test_get_batch_is_reproducible_and_shifted(seed, batch_size, block_size):
    tokens = np.random.default_rng(seed).integers(0, 500, size=40).astype(np.uint16)
    x, y = get_batch(tokens, batch_size, block_size, torch.Generator().manual_seed(seed))
    x2, y2 = get_batch(tokens, batch_size, block_size, torch.Generator().manual_seed(seed))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == y.shape == (batch_size, block_size) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(tokens.astype(np.int64), block_size + 1)
    for row in range(batch_size):
        window = torch.cat([x[row, :1], y[row]]).numpy()
        assert (windows == window).all(axis=1).any()  # a real window of the stream


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_get_batch_on_cuda_matches_cpu():
    tokens = np.arange(1000, dtype=np.uint16)
    x_cpu, y_cpu = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    x, y = get_batch(tokens, 4, 16, torch.Generator().manual_seed(0), device="cuda")
    assert x.is_cuda and torch.equal(x.cpu(), x_cpu) and torch.equal(y.cpu(), y_cpu)


def test_get_batch_refuses_short_streams():
    with pytest.raises(ValueError, match="block_size"):
        get_batch(np.arange(5, dtype=np.uint16), 2, 5)


@given(st.integers(2, 60), st.integers(1, 4), st.integers(1, 8))
def test_eval_batches_cover_every_target_once(n_tokens, batch_size, block_size):
    tokens = np.arange(n_tokens, dtype=np.uint16) * 3
    batches = list(iter_eval_batches(tokens, batch_size, block_size))
    assert all(x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= block_size
               for x, y in batches)
    inputs = torch.cat([x.reshape(-1) for x, _ in batches]).numpy()
    targets = torch.cat([y.reshape(-1) for _, y in batches]).numpy()
    assert np.array_equal(targets, tokens[1:]) and np.array_equal(inputs, tokens[:-1])


def test_cli_prints_summary_and_writes_manifest(fake_root, tmp_path, capsys):
    assert data.main(["--out", str(tmp_path / "out"), "--corpus", str(fake_root)]) == 0
    out = capsys.readouterr().out
    corpus = build_corpus(fake_root)
    assert corpus.hash[:16] in out and "skipped" in out
    assert (tmp_path / "out" / "manifest.json").is_file()
    tiny_tokenizer().save(tmp_path / "tok.json")
    assert data.main(["--out", str(tmp_path / "out"), "--corpus", str(fake_root),
                      "--tokenizer", str(tmp_path / "tok.json")]) == 0
    assert "tokens: train" in capsys.readouterr().out
    assert load_meta(tmp_path / "out")["corpus_hash"] == corpus.hash
    assert data.main(["--out", str(tmp_path / "out"), "--corpus", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_corpus_texts_iterate_in_path_order(fake_root):
    corpus = build_corpus(fake_root)
    assert list(itertools.islice(corpus.texts(), 3)) == [d.text for d in corpus.documents[:3]]
    with pytest.raises(ValueError, match="split"):
        corpus.select("test")
