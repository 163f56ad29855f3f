"""Byte-level BPE training: learn merges from text, the way the `tokenizers` library does.

Byte pair encoding starts from the 256 byte values and repeatedly fuses the most frequent
adjacent pair of tokens into a new token, until the vocabulary is big enough. This module
holds everything the *trainer* needs; `minilm.tokenizer.tokenizer` builds the encoder and files on top.

Pipeline
    text --split on special tokens--> segments --split pattern--> words --UTF-8--> bytes
    Words are counted once each ("def" seen 90,000 times is one word with count 90,000), and a
    pair inside a word counts `count` times. Merges never cross word boundaries.

Byte alphabet
    GPT-2 maps every byte to a printable character (`bytes_to_unicode`): printable Latin-1
    bytes map to themselves, the 68 others (space, control bytes, ...) to U+0100 onwards, so a
    space shows as 'Ġ'. Any byte string, valid UTF-8 or not, has a token sequence.

The rules that make training deterministic (and identical to `tokenizers`' BpeTrainer with a
ByteLevel pre-tokenizer and the full byte alphabet; tests/test_tokenizer.py checks this):
  1. ids: special tokens first (in the order given), then the 256 bytes ordered by the code
     point of their printable character ('!' = byte 33 first, space = 'Ġ' = U+0120 late),
     then one id per merge in creation order.
  2. a pair's count is the sum over words of (occurrences in the word) x (word count), with
     overlapping windows: "aaa" holds the pair (a, a) twice.
  3. the pair with the highest count is merged next; equal counts go to the smallest
     (left id, right id).
  4. stop when the vocabulary reaches vocab_size, when no pair is left, or when the best
     count is below min_frequency (0 and 1 both mean "no limit").
  5. a merge whose string already exists (b"a" + b"bc" after b"ab" + b"c") reuses that id:
     the vocabulary does not grow, and the merge list holds both pairs. This is rare: it never
     fired on stdlib code nor on thousands of small random corpora we tried. Once it does,
     two heap entries can tie exactly (same count, same pair), and `tokenizers` then pops them
     in an order set by its hash maps, which no other program can reproduce.

Reference path (`train_bpe_reference`): recount every pair of the corpus before each merge,
as minbpe does (read it first). O(merges x corpus), short and obviously right; the tests check the two agree.

Fast path (`train_bpe`): the merge loop is incremental, as in `tokenizers`. A max-heap holds
(count, pair) entries with lazy refresh: a popped entry whose count went stale is pushed
back with its current count. An index maps each pair to the words that contain it, so a
merge touches only those words, and each touched word reports the pair counts it changed.
`tokenizers` keeps the heap entry's word set inside the entry; we do the same, because in
rule 5's rare case it decides which words a merge reaches.

The library (`train_with_tokenizers`): the same training run by `tokenizers` in Rust, fed the
same special-token-free pieces, with the pre-tokenizer that applies our pattern
(`hf_pre_tokenizer`). It is the referee of the rules above and a faster backend.
"""
import heapq
import json
import time
from collections import Counter
from functools import lru_cache

import regex

# GPT-2's split pattern: contractions, letters, digits, other symbols, each optionally led by
# one space; runs of whitespace keep their last space for the next word ("\s+(?!\S)").
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's cl100k pattern: case-insensitive contractions, digits in groups of three, newlines
# kept apart from other whitespace. Written without tiktoken's possessive quantifiers so that
# Python's `regex` and the library's Oniguruma read it alike (the tests compare their ids).
CL100K_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# SmolLM2's split: `tokenizers`' Digits(individual_digits=True) cuts every digit out on its
# own, then ByteLevel applies GPT-2's pattern to each stretch in between. As one regex: a digit
# is a word by itself (no leading space: the space stays in the stretch before it), and a digit
# ends a stretch the way the end of the text does, so the whitespace rule's "(?!\S)" becomes
# "(?![^\s\p{N}])": "a  1" splits as "a", "  ", "1".
SMOLLM_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "smollm": SMOLLM_PATTERN}


def resolve_pattern(pattern):
    """A pattern name ("gpt2", "cl100k", "smollm") or a regex string -> the regex string."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be one of {sorted(PATTERNS)} or a regex string, got {pattern!r}")
    return PATTERNS.get(pattern, pattern)


@lru_cache(maxsize=None)
def bytes_to_unicode():
    """GPT-2's byte -> printable character map, as a tuple indexed by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, shift = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:  # unprintable bytes borrow code points from 256 upwards, in byte order
            chars.append(chr(256 + shift))
            shift += 1
    return tuple(chars)


def byte_order():
    """The 256 byte values in id order: sorted by their printable character (rule 1)."""
    chars = bytes_to_unicode()
    return sorted(range(256), key=lambda b: chars[b])


def special_splitter(special_tokens):
    """A compiled regex whose `split` cuts text around special tokens (longest match first),
    keeping them as separate pieces; None when there are no special tokens."""
    if not special_tokens:
        return None
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")


def segments(texts, special_tokens=()):
    """The pieces of each text between special tokens: no word may span or contain one."""
    splitter = special_splitter(special_tokens)
    specials = set(special_tokens)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must yield str, got {type(text).__name__}; "
                            "use Tokenizer.train_from_files for paths")
        for piece in (splitter.split(text) if splitter else (text,)):
            if piece and piece not in specials:
                yield piece


def count_words(texts, pattern, special_tokens=()):
    """Count the pre-tokenized words of an iterable of texts, never across a special token."""
    word_counts = Counter()
    findall = regex.compile(resolve_pattern(pattern)).findall
    for piece in segments(texts, special_tokens):
        word_counts.update(findall(piece))
    return word_counts


def initial_vocab(special_tokens):
    """Token strings of the starting vocabulary (rule 1) and the byte -> id table.

    A token's string is its bytes in the printable alphabet, or a special token's own text:
    `tokenizers` identifies tokens by these strings, so we do too (see rule 5)."""
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")
    chars = bytes_to_unicode()
    strings = list(special_tokens)
    byte_id = [0] * 256
    for b in byte_order():
        if chars[b] in strings:
            raise ValueError(f"special token {chars[b]!r} collides with a byte character")
        byte_id[b] = len(strings)
        strings.append(chars[b])
    return strings, byte_id


def words_as_ids(word_counts, byte_id):
    """Words of two or more bytes as lists of byte ids, with their counts (1-byte words
    hold no pair, so they cannot affect training)."""
    words, counts = [], []
    for word, count in word_counts.items():
        data = word.encode("utf-8", "surrogateescape")
        if len(data) > 1:
            words.append([byte_id[b] for b in data])
            counts.append(count)
    return words, counts


def train_bpe_reference(word_counts, vocab_size, special_tokens=(), min_frequency=0):
    """Reference path: recount all pairs before every merge (minbpe's loop, with rules 1-5).

    Same result as `train_bpe` whenever rule 5 never fires; when it does, `tokenizers` (and
    `train_bpe`) can merge a pair in only part of the corpus, which this plain loop does not
    imitate."""
    strings, byte_id = initial_vocab(special_tokens)
    string_id = {s: i for i, s in enumerate(strings)}
    words, counts = words_as_ids(word_counts, byte_id)
    merges = []
    while len(string_id) < vocab_size:
        pair_counts = Counter()
        for word, count in zip(words, counts):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        pair = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        if pair_counts[pair] < max(1, min_frequency):
            break
        new_string = strings[pair[0]] + strings[pair[1]]
        if new_string not in string_id:
            string_id[new_string] = len(strings)
            strings.append(new_string)
        merges.append((*pair, string_id[new_string]))
        words = [merge_pair(word, pair, string_id[new_string]) for word in words]
    return strings, merges


def merge_pair(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(word_counts, vocab_size, special_tokens=(), min_frequency=0, progress=None):
    """Learn merges from word counts with the incremental heap algorithm (fast path).

    Returns (strings, merges): strings[id] is each token's string (see `initial_vocab`),
    merges is [(left_id, right_id, new_id)] in creation order. `progress(done, total, secs)`
    is called about once a second.
    """
    strings, byte_id = initial_vocab(special_tokens)
    string_id = {s: i for i, s in enumerate(strings)}
    words, counts = words_as_ids(word_counts, byte_id)

    # Pair counts (rule 2) and, per pair, the words to visit when it is merged.
    pair_counts, where = Counter(), {}
    for index, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where.setdefault(pair, set()).add(index)
    # Heap entries (-count, pair, tie, word set): heapq is a min-heap, so negated counts give
    # the highest count first, then the smallest pair (rule 3); `tie` keeps sets uncompared.
    heap = [(-pair_counts[pair], pair, tie, pos) for tie, (pair, pos) in enumerate(where.items())]
    heapq.heapify(heap)
    tie = len(heap)

    merges = []
    start = last_report = time.perf_counter()
    total = max(0, vocab_size - len(strings))
    while len(string_id) < vocab_size and heap:
        neg_count, pair, entry_tie, pos = heapq.heappop(heap)
        count = pair_counts[pair]
        if -neg_count != count:  # stale entry: refresh and look again
            heapq.heappush(heap, (-count, pair, entry_tie, pos))
            continue
        if count < 1 or count < min_frequency:
            break
        left, right = pair
        new_string = strings[left] + strings[right]
        new_id = string_id.get(new_string)
        if new_id is None:  # a new string (otherwise rule 5: reuse its id)
            new_id = len(strings)
            strings.append(new_string)
            string_id[new_string] = new_id
        merges.append((left, right, new_id))

        changed = {}  # pair -> words where it gained an occurrence
        for index in pos:
            _merge_word(words[index], left, right, new_id, counts[index], index,
                        pair_counts, changed)
        for new_pair, indices in changed.items():
            if pair_counts[new_pair] > 0:
                heapq.heappush(heap, (-pair_counts[new_pair], new_pair, tie, indices))
                tie += 1

        if progress is not None and time.perf_counter() - last_report > 1.0:
            last_report = time.perf_counter()
            progress(len(string_id) - len(special_tokens) - 256, total, last_report - start)
    if progress is not None:
        progress(len(string_id) - len(special_tokens) - 256, total, time.perf_counter() - start)
    return strings, merges


def _merge_word(word, left, right, new_id, count, index, pair_counts, changed):
    """Replace each (left, right) in `word`, scanning left to right, in place; update the pair
    counts of the neighbours. The merged pair's own count is left as it was, as `tokenizers`
    does: its heap entry is gone, so the stale number is never read for a merge again."""
    i = 0
    while True:
        try:
            i = word.index(left, i)
        except ValueError:
            return
        if i + 1 < len(word) and word[i + 1] == right:
            if i > 0:
                before = word[i - 1]
                pair_counts[before, left] -= count
                pair_counts[before, new_id] += count
                changed.setdefault((before, new_id), set()).add(index)
            word[i:i + 2] = [new_id]
            if i + 1 < len(word):
                after = word[i + 1]
                pair_counts[right, after] -= count
                pair_counts[new_id, after] += count
                changed.setdefault((new_id, after), set()).add(index)
        i += 1


# ---------------------------------------------------------------- the tokenizers library
def hf_pre_tokenizer(pattern):
    """The library's pre-tokenizer for a split pattern: ByteLevel applies GPT-2's pattern
    itself (after Digits for SmolLM2's, as its tokenizer.json does); any other pattern is a
    Split followed by ByteLevel without its own regex."""
    from tokenizers import Regex, pre_tokenizers
    if pattern == GPT2_PATTERN:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pattern == SMOLLM_PATTERN:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def pattern_of_hf(pre_tokenizer):
    """The split pattern of a tokenizer.json pre_tokenizer built like `hf_pre_tokenizer`."""
    kind = (pre_tokenizer or {}).get("type")
    if kind == "ByteLevel" and pre_tokenizer.get("use_regex", True):
        if pre_tokenizer.get("add_prefix_space"):
            raise ValueError("ByteLevel with add_prefix_space=True is not supported")
        return GPT2_PATTERN
    if kind == "Sequence":
        first, byte_level = pre_tokenizer["pretokenizers"]
        if first["type"] == "Split" and byte_level["type"] == "ByteLevel" and not byte_level["use_regex"]:
            return first["pattern"]["Regex"]
        if (first["type"] == "Digits" and first.get("individual_digits") and byte_level["type"] == "ByteLevel"
                and byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space")):
            return SMOLLM_PATTERN
    raise ValueError(f"pre_tokenizer {kind!r} is not a byte-level split this tokenizer supports")


def train_with_tokenizers(texts, vocab_size, special_tokens, pattern, min_frequency, progress=False):
    """Train with `tokenizers`' BpeTrainer, fed the same special-token-free segments;
    returns the trained tokenizer.json as a dict."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = hf_pre_tokenizer(resolve_pattern(pattern))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
    hf.train_from_iterator(segments(texts, special_tokens), trainer)
    return json.loads(hf.to_str())
