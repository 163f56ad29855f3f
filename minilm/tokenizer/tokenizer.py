"""The tokenizer: text <-> token ids with a byte-level BPE vocabulary, plus its files.

`minilm.tokenizer.bpe` learns the merges; this module applies them.

Encoding `text`
  1. cut the text around special tokens ("<|endoftext|>", ...). Special-token text inside
     ordinary input is refused unless `allowed_special` names it, as tiktoken does: a prompt
     that smuggles in "<|endoftext|>" should not end a document silently.
  2. split each piece with the pattern (GPT-2's by default) into words.
  3. turn each word into UTF-8 bytes, one id per byte, then apply merges: repeatedly fuse the
     adjacent pair with the lowest merge rank (the leftmost such pair on a tie), as
     `tokenizers` does. A word's ids are cached, so common words cost one dict lookup.

A vocabulary made elsewhere may lack some single bytes (SmolLM2's has no token for 0x04 or
0xF1, nor for the bytes UTF-8 never uses). Such a byte is dropped from its word before the
merges, exactly as `tokenizers` does when its BPE model has no unknown token (transformers
builds SmolLM2's from the GGUF so), so the ids stay the library's; `missing_bytes` lists them, and
`decode(encode(text))` gives the text without them. Our own trained vocabularies have all 256.

Decoding concatenates each token's bytes and decodes UTF-8 (invalid bytes become U+FFFD);
`decode_bytes` returns the raw bytes and `stream_decoder()` holds back a split UTF-8
character until its last byte arrives, so streamed samples never print mojibake.

Files (minilm.tokenizer.files): `save`/`load` use a readable JSON file; `save_hf`/`from_hf`
read and write the `tokenizers` library's tokenizer.json, which gives the same ids.
`Tokenizer.train(..., backend="tokenizers")` trains through that library: same merges, in
seconds on large corpora. A GGUF file's tokenizer: minilm.formats.gguf_tokenizer.
"""
import codecs
import os
import sys

import regex

from minilm.tokenizer import bpe, files
from minilm.tokenizer.files import TokenizerFileError  # noqa: F401 (raised by Tokenizer.load, caught by its callers)

_CACHE_LIMIT = 1 << 20  # cached words before the cache is cleared
_NO_RANK = float("inf")


class Tokenizer:
    """Byte-level BPE tokenizer. Build it with `train`, `load`, `from_hf` or
    `minilm.formats.gguf_tokenizer.tokenizer_from_gguf`.

    `strings[id]` is each token in the printable byte alphabet (a special token is its own
    text); `merges` lists (left_id, right_id) in rank order; `special_tokens` maps text -> id.
    """

    def __init__(self, strings, merges, special_tokens, pattern="gpt2"):
        self.pattern = bpe.resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens)
        self.strings = list(strings)
        self.merges = [tuple(pair) for pair in merges]
        alphabet = frozenset(bpe.bytes_to_unicode())
        # each printable character back to the byte it stands for, for str.translate (one C call per
        # token: a Python loop over SmolLM2's 49k tokens' characters was half a second of start-up)
        to_bytes = str.maketrans({c: chr(b) for b, c in enumerate(bpe.bytes_to_unicode())})
        string_id = {s: i for i, s in enumerate(self.strings)}
        for text, i in self.special_tokens.items():
            if not 0 <= i < len(self.strings) or self.strings[i] != text:
                raise ValueError(f"special token {text!r} must be vocabulary entry {i}")
        special_ids = set(self.special_tokens.values())
        self.vocab = []  # id -> bytes
        for i, s in enumerate(self.strings):
            if i in special_ids:
                self.vocab.append(s.encode("utf-8"))
            elif alphabet.issuperset(s):
                self.vocab.append(s.translate(to_bytes).encode("latin-1"))
            else:
                raise ValueError(f"token {i} ({s!r}) is neither a special token nor byte-level")
        self.byte_id = [string_id.get(c) for c in bpe.bytes_to_unicode()]  # None: no token, dropped
        self.missing_bytes = bytes(b for b, i in enumerate(self.byte_id) if i is None)
        # (left, right) -> (rank, new_id); a pair listed twice keeps its later rank, like tokenizers.
        self.ranks = {}
        for rank, (left, right) in enumerate(self.merges):
            if not (0 <= left < len(self.strings) and 0 <= right < len(self.strings)):
                raise ValueError(f"merge {rank} ({left}, {right}) names an id outside the vocabulary")
            new_id = string_id.get(self.strings[left] + self.strings[right])
            if new_id is None:
                raise ValueError(f"merge {rank} ({left}, {right}) makes a token not in the vocabulary")
            self.ranks[left, right] = (rank, new_id)
        self._rank_of = {pair: rank for pair, (rank, _) in self.ranks.items()}
        # The fast word encoder needs merges "in order": each id made by one merge, after its parts.
        made_at = {}
        for rank, pair in enumerate(self.merges):
            made_at.setdefault(self.ranks[pair][1], []).append(rank)
        self._ordered = all(len(ranks) == 1 for ranks in made_at.values()) and all(
            made_at.get(part, [-1])[0] < rank for rank, pair in enumerate(self.merges) for part in pair)
        self._findall = regex.compile(self.pattern).findall
        self._special_split = bpe.special_splitter(tuple(self.special_tokens))
        self._cache = {}
        self._hf = None  # tokenizers.Tokenizer twin, built on first use

    @property
    def vocab_size(self):
        return len(self.strings)

    # ----------------------------------------------------------------- training
    @classmethod
    def train(cls, texts, vocab_size, special_tokens=("<|endoftext|>",), pattern="gpt2",
              min_frequency=0, backend="minilm", progress=False):
        """Learn a tokenizer from an iterable of texts (or one string). `backend` is "minilm"
        (our trainer, minilm.tokenizer.bpe) or "tokenizers" (the library; identical result)."""
        texts = [texts] if isinstance(texts, str) else texts
        special_tokens = tuple(special_tokens)
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size={vocab_size} is below 256 bytes + "
                             f"{len(special_tokens)} special tokens; raise it")
        if backend == "tokenizers":
            return files.from_hf_json(cls, bpe.train_with_tokenizers(
                texts, vocab_size, special_tokens, pattern, min_frequency, progress))
        if backend != "minilm":
            raise ValueError(f"backend must be 'minilm' or 'tokenizers', got {backend!r}")
        word_counts = bpe.count_words(texts, pattern, special_tokens)
        report = None
        if progress:
            report = lambda done, total, s: print(f"bpe: {done}/{total} merges, {s:.1f}s", file=sys.stderr)  # noqa: E731
        strings, merges = bpe.train_bpe(word_counts, vocab_size, special_tokens, min_frequency, report)
        # Keep each pair at its last rank, as tokenizers' saved model does (only rule 5 repeats a pair).
        last = {(left, right): k for k, (left, right, _) in enumerate(merges)}
        pairs = [(left, right) for k, (left, right, _) in enumerate(merges) if last[left, right] == k]
        specials = {s: i for i, s in enumerate(special_tokens)}
        return cls(strings, pairs, specials, pattern)

    @classmethod
    def train_from_files(cls, paths, vocab_size, **options):
        """`train` on text files, read one at a time so the corpus need not fit in one string."""
        def read(paths):
            for path in paths:
                with open(path, encoding="utf-8", errors="replace") as f:
                    yield f.read()
        return cls.train(read(list(paths)), vocab_size, **options)

    # ----------------------------------------------------------------- encoding
    def encode(self, text, allowed_special=()):
        """Text -> ids. Special-token text is refused unless listed in `allowed_special`
        (a set of token texts, or "all"); use `encode_ordinary` to encode it as plain text."""
        allowed = self._check_specials(text, allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids = []
        for piece in self._special_split.split(text):
            if piece in self.special_tokens:  # every special left in the text is allowed
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def _check_specials(self, text, allowed_special):
        """The allowed special tokens; raise if the text holds any other one."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        for special in self.special_tokens:
            if special not in allowed and special in text:
                raise ValueError(f"text contains special token {special!r}; pass "
                                 f"allowed_special={{{special!r}}} (or 'all') to encode it as one "
                                 "token, or use encode_ordinary to encode it as plain text")
        return allowed

    def encode_ordinary(self, text):
        """Text -> ids, treating special-token text as ordinary text (fast path, cached)."""
        cache, ids = self._cache, []
        extend = ids.extend
        for word in self._findall(text):
            word_ids = cache.get(word)
            if word_ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                word_ids = cache[word] = self.encode_word(word.encode("utf-8", "surrogateescape"))
            extend(word_ids)
        return ids

    def encode_bytes(self, data):
        """Any bytes, valid UTF-8 or not -> ids; `decode_bytes` inverts it exactly when no byte
        is in `missing_bytes`. Invalid bytes pass through the pattern as lone surrogates
        (Python's surrogateescape)."""
        return self.encode_ordinary(bytes(data).decode("utf-8", "surrogateescape"))

    def encode_batch(self, texts, allowed_special=(), backend="minilm"):
        """Many texts -> list of id lists; backend "tokenizers" encodes in parallel in Rust."""
        if backend == "minilm":
            return [self.encode(text, allowed_special) for text in texts]
        if backend != "tokenizers":
            raise ValueError(f"backend must be 'minilm' or 'tokenizers', got {backend!r}")
        texts = list(texts)
        for text in texts:  # the library splits on every special token; refuse as `encode` does
            self._check_specials(text, allowed_special)
        if self._hf is None:
            self._hf = self.to_hf()
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def encode_word(self, data):
        """One pre-tokenized word's bytes -> ids (fast path, uncached): merge every occurrence
        of the lowest-rank pair at once, left to right. This equals `encode_word_reference`
        whenever merges come in the order they were made (a merge's parts are older, its result
        new), since then nothing made by a rank-r merge can take part in a merge of rank <= r."""
        if not self._ordered:
            return self.encode_word_reference(data)
        ids = self._byte_ids(data)
        rank_of = self._rank_of.get
        while len(ids) > 1:
            pairs = list(zip(ids, ids[1:]))
            pair_ranks = [rank_of(pair, _NO_RANK) for pair in pairs]
            rank = min(pair_ranks)
            if rank == _NO_RANK:
                break
            i = pair_ranks.index(rank)
            new_id = self.ranks[pairs[i]][1]
            if pair_ranks.count(rank) == 1:  # the common case: one occurrence, splice it
                ids[i:i + 2] = [new_id]
            else:
                ids = bpe.merge_pair(ids, pairs[i], new_id)
        return tuple(ids)

    def encode_word_reference(self, data):
        """One word's bytes -> ids, one merge at a time (reference path): fuse the adjacent
        pair with the lowest (rank, position), which is exactly what `tokenizers` does."""
        ids = self._byte_ids(data)
        ranks = self.ranks
        while len(ids) > 1:
            best = min(((ranks[pair][0], i) for i, pair in enumerate(zip(ids, ids[1:]))
                        if pair in ranks), default=None)
            if best is None:
                break
            _, i = best
            ids[i:i + 2] = [ranks[ids[i], ids[i + 1]][1]]
        return tuple(ids)

    def _byte_ids(self, data):
        """One id per byte, skipping the bytes the vocabulary lacks (see the module docstring)."""
        byte_id = self.byte_id
        if self.missing_bytes:
            return [byte_id[b] for b in data if byte_id[b] is not None]
        return [byte_id[b] for b in data]

    # ----------------------------------------------------------------- decoding
    def decode_bytes(self, ids):
        """Ids -> the raw bytes they stand for."""
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or not 0 <= i < len(vocab))
            raise ValueError(f"token id {bad!r} is outside the vocabulary [0, {len(vocab)})") from None

    def decode(self, ids):
        """Ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", "replace")

    def stream_decoder(self):
        """A `StreamDecoder` for printing tokens as they are sampled."""
        return StreamDecoder(self)

    # ----------------------------------------------------------------- inspection
    def token_bytes(self, token_id):
        """The bytes of one token."""
        return self.decode_bytes([token_id])

    def show_tokens(self, text, allowed_special="all"):
        """The text split into its tokens, e.g. "[def][ add][(][a]"."""
        return "".join(f"[{render(self.token_bytes(i))}]" for i in self.encode(text, allowed_special))

    def vocab_dump(self):
        """One line per token: specials and bytes as `[tok] id`, merges as `[a][b] -> [ab] id`."""
        made_by = {}
        for left, right in self.merges:
            made_by.setdefault(self.ranks[left, right][1], (left, right))
        lines = []
        for i, data in enumerate(self.vocab):
            if i in made_by:
                left, right = made_by[i]
                lines.append(f"[{render(self.vocab[left])}][{render(self.vocab[right])}] -> [{render(data)}] {i}")
            else:
                lines.append(f"[{render(data)}] {i}")
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------------- files
    def to_dict(self):
        return files.to_dict(self)

    def save(self, path):
        """Write our readable JSON file: one vocabulary entry and one merge per line."""
        files.save(self, path)

    @classmethod
    def load(cls, path):
        """Read a file written by `save`; a corrupt or foreign file raises TokenizerFileError."""
        return files.load(cls, path)

    def to_hf(self):
        """This tokenizer as a `tokenizers.Tokenizer` (same ids on any text)."""
        return files.to_hf(self)

    def save_hf(self, path):
        """Write a tokenizer.json that `tokenizers.Tokenizer.from_file` loads."""
        self.to_hf().save(str(path))

    @classmethod
    def from_hf(cls, path):
        """Read a byte-level BPE tokenizer.json (ours, one trained by `tokenizers`, SmolLM2's)."""
        return files.from_hf(cls, path)


class StreamDecoder:
    """Decode tokens one at a time: `push(ids)` returns the text completed so far, holding
    back the bytes of a UTF-8 character split across tokens; `flush()` returns the rest.
    Concatenated, the outputs equal `tokenizer.decode(all_ids)`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, ids):
        ids = [ids] if isinstance(ids, int) else ids
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self):
        return self._utf8.decode(b"", final=True)


def render(data):
    """Bytes as readable text: valid UTF-8 as is, control characters and invalid bytes escaped."""
    text = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)


def main(argv=None):
    """python -m minilm.tokenizer.tokenizer FILE_OR_DIR... --vocab-size N --out tok.json"""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("inputs", nargs="+", help=".py/.txt files or directories of .py files")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--pattern", default="gpt2")
    parser.add_argument("--special", nargs="*", default=["<|endoftext|>"])
    parser.add_argument("--min-frequency", type=int, default=0)
    parser.add_argument("--backend", choices=["minilm", "tokenizers"], default="minilm")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    paths = []
    for item in args.inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(d, f) for d, _, fs in os.walk(item) for f in fs if f.endswith(".py"))
        else:
            paths.append(item)
    tok = Tokenizer.train_from_files(paths, args.vocab_size, special_tokens=args.special,
                                     pattern=args.pattern, min_frequency=args.min_frequency,
                                     backend=args.backend, progress=True)
    tok.save(args.out)
    print(f"saved {tok.vocab_size} tokens, {len(tok.merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
