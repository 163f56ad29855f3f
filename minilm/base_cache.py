"""A GGUF base converted once per machine, so that the next process starts in a fraction of a second.

Reading SmolLM2's GGUF costs seconds before the first token: gguf's reader parses 49k tokens and
49k merges of metadata, Q4_1 is dequantised to fp32 with numpy, and the BPE tables are built
(docs/experiments.md, "Cold start"). The result of that conversion is the same every time, so the
first load writes it to

    $MINILM_CACHE (default ~/.cache/minilm)/bases/v1-<key>/
        model.safetensors   the weights as our decoder names them, fp32 (the ModelConfig and the
                            base's description in the metadata, as in a run's pretrain/)
        tokenizer.json      our tokenizer file (Tokenizer.save)

and later loads read those two files (safetensors maps the file; nothing is parsed but a header).
The key is the GGUF's absolute path, size and modification time: a file replaced or touched gets
a new entry, and hashing 98 MB on every start would cost more than it saves. An entry appears whole
or not at all (filled under a temporary name, then renamed); one that cannot be read is converted
again. MINILM_CACHE=off turns the cache off; a cache that cannot be written costs the next load its
seconds, nothing else.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from minilm.checkpoint import (MODEL_FILE, TOKENIZER_FILE, CheckpointError, load_model_file, model_config_of,
                               read_weights, save_weights, trainable_state)
from minilm.config import ModelConfig
from minilm.tokenizer.tokenizer import Tokenizer

FORMAT = "v1"  # bump when what an entry holds changes: older entries are then never read
DESCRIPTION_KEY = "pretrained"  # the metadata entry a run's pretrain/model.safetensors also carries


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
    identity = f"{source.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}"
    return root / "bases" / f"{FORMAT}-{hashlib.sha256(identity.encode()).hexdigest()[:20]}"


def read_entry(source: Path) -> Optional[Entry]:
    """The cached conversion of `source`, or None when there is none (or the cache is off). An entry
    whose files cannot be read is removed, so that the caller's conversion replaces it."""
    folder = entry_folder(source)
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


def write_entry(source: Path, model, tokenizer: Tokenizer, description: str) -> Optional[Entry]:
    """Store a converted base for `source`; the entry, or None when the cache is off or cannot be
    written (a read-only home, a full disk): the cache only ever saves time."""
    folder = entry_folder(source)
    if folder is None:
        return None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    except OSError:
        return None
    try:
        save_weights(partial / MODEL_FILE, trainable_state(model, trainable_only=False), model.config,
                     {DESCRIPTION_KEY: description})
        tokenizer.save(partial / TOKENIZER_FILE)
        os.rename(partial, folder)  # atomic; refused when another process's entry got there first
    except OSError:
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # nothing is left there once renamed
    return read_entry(source)


def remove_entry(entry: Entry) -> None:
    """Forget an entry whose files turned out unreadable (the next load converts the base again)."""
    shutil.rmtree(entry.folder, ignore_errors=True)
