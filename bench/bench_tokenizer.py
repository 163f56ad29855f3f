"""Benchmark minilm's BPE tokenizer against the `tokenizers` library on the same stdlib code.

    python bench/bench_tokenizer.py            # ~10 MB of stdlib .py files, vocab 4096
    python bench/bench_tokenizer.py --quick    # ~1 MB

Prints: training time of our pure-Python trainer vs tokenizers' Rust trainer (and whether the
merges are identical), encoding speed in MB/s of ours vs tokenizers' on held-out files, and
bytes per token on those held-out files. GPT-2's vocabulary is not available offline, so the
comparison with it is not measured here.
"""
import argparse
import os
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's minilm, not an installed one
from minilm.runtime import machine_summary  # noqa: E402
from minilm.tokenizer.tokenizer import Tokenizer  # noqa: E402

SPECIALS = ("<|endoftext|>", "<|task|>", "<|code|>", "<|buggy|>", "<|explain|>")


def stdlib_split(train_bytes, held_out_bytes):
    """Stdlib .py files in sorted order; every 20th file is held out."""
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py"))
    train, held_out, n_train, n_held = [], [], 0, 0
    for i, path in enumerate(paths):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if i % 20 == 0 and n_held < held_out_bytes:
            held_out.append(text)
            n_held += len(text.encode())
        elif i % 20 and n_train < train_bytes:
            train.append(text)
            n_train += len(text.encode())
        if n_train >= train_bytes and n_held >= held_out_bytes:
            break
    return train, held_out, n_train, n_held


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~1 MB of training text instead of ~10 MB")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    print(machine_summary())
    train_mb, held_mb = (1, 0.3) if args.quick else (10, 1)
    train, held_out, n_train, n_held = stdlib_split(int(train_mb * 1e6), int(held_mb * 1e6))
    print(f"corpus: {n_train / 1e6:.2f} MB training ({len(train)} files), "
          f"{n_held / 1e6:.2f} MB held out ({len(held_out)} files), vocab {args.vocab_size}")

    ours, t_ours = timed(Tokenizer.train, train, args.vocab_size, special_tokens=SPECIALS)
    theirs, t_theirs = timed(Tokenizer.train, train, args.vocab_size, special_tokens=SPECIALS,
                             backend="tokenizers")
    same = ours.merges == theirs.merges and ours.strings == theirs.strings
    print(f"train   minilm {t_ours:6.2f} s   tokenizers {t_theirs:6.2f} s   "
          f"ratio {t_ours / t_theirs:.2f}x   identical merges: {same}")

    hf = ours.to_hf()
    cold, t_cold = timed(lambda: [ours.encode(text) for text in held_out])
    _, t_warm = timed(lambda: [ours.encode(text) for text in held_out])
    ref, t_hf = timed(lambda: [e.ids for e in map(hf.encode, held_out)])
    _, t_hf_batch = timed(hf.encode_batch, held_out)
    mb = n_held / 1e6
    print(f"encode  minilm {mb / t_cold:5.2f} MB/s (empty cache), {mb / t_warm:5.2f} MB/s (warm cache)   "
          f"tokenizers {mb / t_hf:5.2f} MB/s (one call per file), {mb / t_hf_batch:5.2f} MB/s (encode_batch)")
    print(f"        ratio minilm/tokenizers: {t_hf / t_cold:.2f}x empty cache, {t_hf / t_warm:.2f}x warm"
          f"   identical ids: {cold == ref}")
    n_tokens = sum(map(len, cold))
    print(f"bytes/token on held-out stdlib files: {n_held / n_tokens:.2f} (vocab {args.vocab_size}); "
          "GPT-2 vocabulary: not measured (not available offline)")


if __name__ == "__main__":
    main()
