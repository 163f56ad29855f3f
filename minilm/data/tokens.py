"""Pretraining data: the corpus tokenized once into flat token files, and batches drawn from them.

Each split becomes one long stream of token ids, stored as a raw numpy array on disk (uint16 when
the vocabulary fits in 65,536 ids, as nanoGPT does) and opened as a memmap, so a large corpus
costs no RAM. Documents are joined with the end-of-text token, which also opens and closes the
stream, so every document starts after the same context and its end is predicted:

    <|endoftext|> doc_1 <|endoftext|> doc_2 <|endoftext|> ... doc_n <|endoftext|>

The files are keyed by the corpus hash and a hash of the saved tokenizer: `prepare_tokens`
reuses them while both are unchanged and rebuilds them otherwise. Every write goes to a
temporary file that is renamed into place, so an interrupted build never leaves a file that
looks complete.

Batches:
  * `get_batch`: B random windows of T+1 tokens; x is the first T, y the last T (x shifted by
    one), so position t of y is the token that follows x[:, :t+1]. Reproducible from a
    torch.Generator.
  * `iter_eval_batches`: windows at offsets 0, T, 2T, ... so that every token after the first is
    a target exactly once: the sum of their losses is the exact validation log-likelihood, and
    divided by `TokenData.val_bytes` it gives bits per byte.

    python -m minilm.data.tokens --out data/stdlib [--corpus PATH] [--max_bytes N] [--tokenizer FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from minilm.data.corpus import SPLITS, Corpus, build_corpus, write_json_atomic
from minilm.tokenizer.tokenizer import Tokenizer

EOT = "<|endoftext|>"
FORMAT_VERSION = 1  # bump when the file layout changes, so old caches are rebuilt


@dataclass
class TokenData:
    train: np.ndarray  # (N_train,) token ids, usually a read-only memmap
    val: np.ndarray  # (N_val,)
    val_bytes: int  # UTF-8 bytes of the validation documents, for bits per byte
    meta: dict  # what tokens.json records: hashes, dtype, counts

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.train if name == "train" else self.val


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 halves the files of a small vocab."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def tokenizer_fingerprint(tok) -> str:
    """SHA-256 of what `tok.save` writes: equal exactly when the tokenizer would encode the same."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(os.path.join(tmp, "tokenizer.json"))
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(tmp).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


def end_of_text_id(tok) -> int:
    if EOT not in tok.special_tokens:
        raise ValueError(f"the tokenizer has no {EOT} special token; train it with "
                         f"special_tokens including {EOT!r} (see minilm.data.sft.SPECIAL_TOKENS)")
    return tok.special_tokens[EOT]


def encode_documents(texts, tok) -> np.ndarray:
    """One flat stream: EOT doc EOT doc ... EOT (the layout in the module docstring)."""
    eot = end_of_text_id(tok)
    dtype = token_dtype(tok.vocab_size)
    pieces = [np.array([eot], dtype=dtype)]
    for text in texts:
        pieces.append(np.asarray(tok.encode(text), dtype=dtype))
        pieces.append(np.array([eot], dtype=dtype))
    return np.concatenate(pieces)


def _write_array_atomic(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # unique per process
    array.tofile(tmp)
    os.replace(tmp, path)


def _open_tokens(path: Path, dtype: np.dtype, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))


def _cache_is_valid(out_dir: Path, meta: Optional[dict], key: dict) -> bool:
    if meta is None or any(meta.get(k) != v for k, v in key.items()):
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    return all((out_dir / f"{s}.bin").is_file()
               and (out_dir / f"{s}.bin").stat().st_size == meta["n_tokens"][s] * itemsize
               for s in SPLITS)


def load_meta(out_dir: Union[str, os.PathLike]) -> Optional[dict]:
    path = Path(out_dir) / "tokens.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except ValueError:  # a corrupt file means "no cache", not a crash
        return None


def prepare_tokens(corpus: Corpus, tok, out_dir: Union[str, os.PathLike],
                   log=print) -> TokenData:
    """Tokenize `corpus` into out_dir/{train,val}.bin, or reuse them if corpus and tokenizer match.

    Also writes out_dir/manifest.json (the corpus manifest) and out_dir/tokens.json (the cache key
    and counts). Returns the token arrays opened as read-only memmaps.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = {"format": FORMAT_VERSION, "corpus_hash": corpus.hash,
           "tokenizer_hash": tokenizer_fingerprint(tok)}
    meta = load_meta(out_dir)
    if _cache_is_valid(out_dir, meta, key):
        log(f"data: reusing token files in {out_dir} (corpus {corpus.hash[:12]})")
    else:
        log(f"data: tokenizing {len(corpus.documents)} files ({corpus.n_bytes():,} bytes) "
            f"into {out_dir}")
        (out_dir / "tokens.json").unlink(missing_ok=True)  # no stale key while .bin files change
        write_json_atomic(corpus.manifest(), out_dir / "manifest.json")
        dtype = token_dtype(tok.vocab_size)
        n_tokens = {}
        for split in SPLITS:
            tokens = encode_documents(corpus.texts(split), tok)
            _write_array_atomic(tokens, out_dir / f"{split}.bin")
            n_tokens[split] = int(tokens.size)
        meta = {**key, "dtype": dtype.name, "vocab_size": tok.vocab_size,
                "eot_id": end_of_text_id(tok), "n_tokens": n_tokens,
                "n_bytes": {s: corpus.n_bytes(s) for s in SPLITS}}
        write_json_atomic(meta, out_dir / "tokens.json")  # last: it marks the cache complete
    dtype = np.dtype(meta["dtype"])
    train, val = (_open_tokens(out_dir / f"{s}.bin", dtype, meta["n_tokens"][s]) for s in SPLITS)
    return TokenData(train, val, meta["n_bytes"]["val"], meta)


def to_device(tensor: torch.Tensor, device: Union[str, torch.device]) -> torch.Tensor:
    """Move a CPU batch to `device`; on CUDA via pinned memory so the copy overlaps compute."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def get_batch(tokens: np.ndarray, batch_size: int, block_size: int,
              generator: Optional[torch.Generator] = None,
              device: Union[str, torch.device] = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows of T+1 tokens -> (x, y), both int64 (B, T), y[:, t] = window[:, t+1]."""
    if len(tokens) < block_size + 1:
        raise ValueError(f"the split has {len(tokens)} tokens, fewer than block_size+1 = "
                         f"{block_size + 1}; use a larger corpus or a smaller block_size")
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
    offsets = starts.numpy()[:, None] + np.arange(block_size + 1)  # (B, T+1)
    windows = torch.from_numpy(np.asarray(tokens[offsets], dtype=np.int64))  # (B, T+1)
    windows = to_device(windows, device)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def iter_eval_batches(tokens: np.ndarray, batch_size: int, block_size: int,
                      device: Union[str, torch.device] = "cpu"
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive windows covering the split: each token after the first is a target once.

    Full windows come in batches of up to `batch_size`; a shorter last window (if any) comes
    alone as a (1, T') batch, so no padding or mask is needed.
    """
    n_targets = len(tokens) - 1
    starts = list(range(0, max(n_targets, 0), block_size))
    full = [s for s in starts if s + block_size <= n_targets]
    for i in range(0, len(full), batch_size):
        offsets = np.array(full[i:i + batch_size])[:, None] + np.arange(block_size + 1)
        windows = to_device(torch.from_numpy(np.asarray(tokens[offsets], dtype=np.int64)), device)
        yield windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if len(full) < len(starts):
        tail = torch.from_numpy(np.asarray(tokens[starts[-1]:], dtype=np.int64))[None]  # (1, T'+1)
        tail = to_device(tail, device)
        yield tail[:, :-1].contiguous(), tail[:, 1:].contiguous()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minilm.data.tokens",
        description="Build the pretraining corpus, write its manifest, print a summary.")
    parser.add_argument("--out", required=True, help="folder for manifest.json (and token files)")
    parser.add_argument("--corpus", default=None,
                        help="folder, .py file or list of paths (default: the Python stdlib)")
    parser.add_argument("--max_bytes", type=int, default=0, help="byte budget, 0 = no limit")
    parser.add_argument("--val_fraction", type=float, default=0.05)
    parser.add_argument("--tokenizer", default=None,
                        help="a saved minilm tokenizer: also write {train,val}.bin with it")
    args = parser.parse_args(argv)
    try:
        corpus = build_corpus(args.corpus, args.max_bytes, args.val_fraction)
        tok = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_json_atomic(corpus.manifest(), out / "manifest.json")
    print(corpus.summary())
    print(f"  manifest: {out / 'manifest.json'}")
    if tok is not None:
        data = prepare_tokens(corpus, tok, out)
        print(f"  tokens: train {len(data.train):,}, val {len(data.val):,} ({data.meta['dtype']}), "
              f"{corpus.n_bytes() / max(1, len(data.train) + len(data.val)):.2f} bytes/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
