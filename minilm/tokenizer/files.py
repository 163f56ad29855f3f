"""The tokenizer's files: minilm's readable JSON, and the `tokenizers` library's tokenizer.json.

Ours (`save`/`load`): a JSON object with format, version, pattern, special tokens, then one
vocabulary entry and one merge per line, so a learner can read it. The library's (`to_hf`,
`save_hf`/`from_hf`): the same vocabulary, merges and pre-tokenizer as a `tokenizers.Tokenizer`,
which gives the same ids on any text. Readers take the class to build (`Tokenizer`) as their
first argument, so this module never imports `minilm.tokenizer.tokenizer`.
"""
import json

from minilm.tokenizer import bpe

FORMAT, VERSION = "minilm-bpe", 1


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be read: corrupt, wrong format or wrong version."""


def to_dict(tok):
    return {"format": FORMAT, "version": VERSION, "pattern": tok.pattern,
            "special_tokens": tok.special_tokens, "vocab": tok.strings,
            "merges": [list(pair) for pair in tok.merges]}


def save(tok, path):
    """Write our readable JSON file: one vocabulary entry and one merge per line."""
    data = to_dict(tok)
    lines = [f"{json.dumps(key)}: {json.dumps(data[key], ensure_ascii=False)}"
             for key in ("format", "version", "pattern", "special_tokens")]
    lines.append('"vocab": [\n' + ",\n".join(json.dumps(s, ensure_ascii=False) for s in tok.strings) + "\n]")
    lines.append('"merges": [\n' + ",\n".join(f"[{a}, {b}]" for a, b in tok.merges) + "\n]")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def load(cls, path):
    """Read a file written by `save`; a corrupt or foreign file raises TokenizerFileError."""
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise TokenizerFileError(f"{path}: not a minilm tokenizer file (format "
                                 f"{data.get('format')!r}); for a tokenizer.json use Tokenizer.from_hf")
    if data.get("version") != VERSION:
        raise TokenizerFileError(f"{path}: tokenizer file version {data.get('version')!r}, "
                                 f"this minilm reads version {VERSION}")
    try:
        return cls(data["vocab"], data["merges"], data["special_tokens"], data["pattern"])
    except (KeyError, TypeError, ValueError) as e:
        raise TokenizerFileError(f"{path}: corrupt tokenizer file ({type(e).__name__}: {e})") from None


def to_hf(tok):
    """A tokenizer as a `tokenizers.Tokenizer` (same ids on any text)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models
    model = models.BPE(vocab={s: i for i, s in enumerate(tok.strings)},
                       merges=[(tok.strings[a], tok.strings[b]) for a, b in tok.merges])
    hf = HFTokenizer(model)
    hf.pre_tokenizer = bpe.hf_pre_tokenizer(tok.pattern)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                           for s in sorted(tok.special_tokens, key=tok.special_tokens.get)])
    return hf


def from_hf(cls, path):
    """Read a byte-level BPE tokenizer.json (ours, one trained by `tokenizers`, SmolLM2's)."""
    return from_hf_json(cls, read_json(path), path)


def from_hf_json(cls, data, path="<tokenizers>"):
    """Build `cls` from a parsed tokenizer.json."""
    try:
        model = data["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"model type {model.get('type')!r} is not BPE")
        vocab = model["vocab"]
        strings = sorted(vocab, key=vocab.get)
        if [vocab[s] for s in strings] != list(range(len(strings))):
            raise ValueError("vocabulary ids are not 0..n-1")
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        merges = [(vocab[a], vocab[b]) for a, b in merges]
        specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t["special"]}
        return cls(strings, merges, specials, bpe.pattern_of_hf(data.get("pre_tokenizer")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenizerFileError(f"{path}: unsupported or corrupt tokenizer.json "
                                 f"({type(e).__name__}: {e})") from None


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerFileError(f"{path}: not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
