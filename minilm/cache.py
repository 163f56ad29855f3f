"""What a machine computes once: a GGUF base converted to our formats, and evaluations of a model.

Both are the same every time they are made from the same inputs, and both cost minutes or seconds
that every run would otherwise spend again. They live under

    $MINILM_CACHE (default ~/.cache/minilm; MINILM_CACHE=off turns the cache off)
        bases/v1-<key>/         a GGUF base, converted
            model.safetensors   the weights as our decoder names them, fp32 (the ModelConfig and the
                                base's description in the metadata, as in a run's pretrain/)
            tokenizer.json      our tokenizer file (Tokenizer.save)
        evaluations/<key>.json  one part of an eval stage (a model's tasks, requests or HumanEval)

**Bases.** Reading SmolLM2's GGUF costs seconds before the first token: gguf's reader parses 49k
tokens and 49k merges of metadata, Q4_1 is dequantised to fp32 with numpy, and the BPE tables are
built (docs/experiments.md, "Cold start"). Later loads read the two files instead (safetensors maps
the file; nothing is parsed but a header). The key is the GGUF's absolute path, size and
modification time: a file replaced or touched gets a new entry, and hashing 98 MB on every start
would cost more than it saves. An entry appears whole or not at all (filled under a temporary name,
then renamed); one that cannot be read is converted again.

**Evaluations.** Every SmolLM2 run evaluates the same base on the same tasks before fine-tuning: two
thirds of its eval stage's tokens (docs/experiments.md). A part's key (minilm/stages/reuse.py,
eval_part_key) already holds the model's files, the settings and the tasks; here it is hashed again
with the package's source code, the processor, torch's version and its thread count, so that a new
minilm, another kind of machine or another reduction order never reuses an old answer.

A cache that cannot be written costs the next run its time, nothing else.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError

from minilm.checkpoint import (MODEL_FILE, TOKENIZER_FILE, CheckpointError, load_model_file, model_config_of,
                               read_weights, save_weights, trainable_state, write_json_atomic)
from minilm.config import ModelConfig
from minilm.runtime import cpu_model_name
from minilm.tokenizer.tokenizer import Tokenizer

FORMAT = "v1"  # bump when what an entry holds changes: older entries are then never read
DESCRIPTION_KEY = "pretrained"  # the metadata entry a run's pretrain/model.safetensors also carries
SOURCE_KEY = "converted_from"  # the GGUF's absolute path: a newer version of it replaces the entry


# ---------------------------------------------------------------- bases
@dataclass(frozen=True)
class Entry:
    """A complete cache entry: the base's config and description, and where its files are."""
    folder: Path
    config: ModelConfig
    description: str

    def load_model(self):
        return load_model_file(self.folder / MODEL_FILE)[0]

    def load_tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.folder / TOKENIZER_FILE)


def cache_root() -> Optional[Path]:
    """$MINILM_CACHE, or ~/.cache/minilm ($XDG_CACHE_HOME/minilm); None when MINILM_CACHE=off."""
    setting = os.environ.get("MINILM_CACHE", "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minilm"


def entry_folder(source: Path) -> Optional[Path]:
    """Where the conversion of this file lives (whether it exists or not); None with the cache off."""
    root = cache_root()
    if root is None:
        return None
    stat = source.stat()
    identity = f"{source.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n{_converter_version()}"
    return root / "bases" / f"{FORMAT}-{hashlib.sha256(identity.encode()).hexdigest()[:20]}"


@functools.lru_cache(maxsize=1)
def _converter_version() -> str:
    """The code a conversion's result depends on: a fix to the reader, the tokenizer or the weight
    names makes a new entry (as a bump of FORMAT would, without anyone having to remember it)."""
    package = Path(__file__).resolve().parent
    files = [*package.glob("formats/*.py"), *package.glob("tokenizer/*.py"), package / "model" / "gpt.py",
             package / "checkpoint.py"]
    return f"{_source_digest(files)} gguf {_version('gguf')} safetensors {_version('safetensors')}"


def _source_digest(files) -> str:
    """SHA-256 over the package's source files given (their paths and contents, in path order)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def read_entry(folder: Optional[Path]) -> Optional[Entry]:
    """The cached conversion in `folder` (entry_folder's), or None when there is none (or the cache
    is off). An entry whose files cannot be read is removed, so that the caller's conversion
    replaces it."""
    if folder is None or not folder.is_dir():
        return None
    try:
        _, metadata = read_weights(folder / MODEL_FILE)
        if not (folder / TOKENIZER_FILE).is_file():
            raise CheckpointError(f"{folder}: no {TOKENIZER_FILE}")
        return Entry(folder, model_config_of(folder / MODEL_FILE, metadata), metadata[DESCRIPTION_KEY])
    except (CheckpointError, KeyError):
        shutil.rmtree(folder, ignore_errors=True)  # converted again by the caller
        return None


def write_entry(folder: Optional[Path], source: Path, model, tokenizer: Tokenizer,
                description: str) -> Optional[Entry]:
    """Store a base converted from `source` in `folder` (entry_folder's, taken before converting:
    a file replaced meanwhile must not label the old weights); the entry, or None when the cache is
    off or cannot be written (a read-only home, a full disk): the cache only ever saves time."""
    if folder is None:
        return None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    except OSError:
        return None
    try:
        save_weights(partial / MODEL_FILE, trainable_state(model, trainable_only=False), model.config,
                     {DESCRIPTION_KEY: description, SOURCE_KEY: str(source.resolve())})
        tokenizer.save(partial / TOKENIZER_FILE)
        os.rename(partial, folder)  # atomic; refused when another process's entry got there first
    except (OSError, ValueError, SafetensorError):  # a full disk, as the OS or safetensors reports it
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # nothing is left there once renamed
    _remove_older_versions(source, folder)
    return read_entry(folder)


def _remove_older_versions(source: Path, kept: Path) -> None:
    """Remove the entries of earlier versions of the same file (540 MB each for SmolLM2)."""
    for folder in kept.parent.glob(f"{FORMAT}-*"):
        if folder != kept:
            try:
                _, metadata = read_weights(folder / MODEL_FILE)
            except CheckpointError:
                continue  # another process's entry in the making, or a damaged one: read_entry's business
            if metadata.get(SOURCE_KEY) == str(source.resolve()):
                shutil.rmtree(folder, ignore_errors=True)


def remove_entry(entry: Entry) -> None:
    """Forget an entry whose files turned out unreadable (the next load converts the base again)."""
    shutil.rmtree(entry.folder, ignore_errors=True)


# ---------------------------------------------------------------- evaluations
@functools.lru_cache(maxsize=1)
def _code_and_machine() -> str:
    """What a result can depend on besides its inputs: every source file of the package, the
    processor, torch's version and its threads (fp32 sums may round differently across them)."""
    source = _source_digest(Path(__file__).resolve().parent.rglob("*.py"))
    return (f"{source} {cpu_model_name()} torch {torch.__version__} threads {torch.get_num_threads()} "
            f"python {sys.version}")


def evaluation_path(part_key: str) -> Optional[Path]:
    """Where an evaluation with this part key is kept on this machine; None with the cache off."""
    root = cache_root()
    if root is None:
        return None
    key = hashlib.sha256(f"{part_key} {_code_and_machine()}".encode()).hexdigest()
    return root / "evaluations" / f"{key}.json"


def store_evaluation(part_key: str, report: dict) -> None:
    """Keep a finished part for other runs on this machine (nothing happens when that fails)."""
    path = evaluation_path(part_key)
    if path is not None:
        try:
            write_json_atomic(path, report)
        except OSError:
            pass
