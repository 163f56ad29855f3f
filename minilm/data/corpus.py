"""The pretraining corpus: which Python files, split how, recorded in a manifest.

By default the corpus is the running Python's standard library (`sysconfig`'s "stdlib" path):
about 660 files and 10 MB (Python 3.11) of real, idiomatic, permissively licensed code that every machine
already has, so nothing is downloaded. A user can point it at their own code instead (a folder,
one .py file, or a text file listing paths).

    corpus = build_corpus(None, max_bytes=200_000)   # the stdlib, capped for a quick run
    corpus.hash                                      # names exactly this corpus
    for text in corpus.texts("train"): ...           # e.g. to train the tokenizer

The rules, each chosen so that the same inputs always give the same corpus:
  * files are read in sorted relative-path order and decoded as UTF-8; files that are not UTF-8,
    are empty, or contain text shaped like a control token (`<|name|>`, which the tokenizer
    reserves for special tokens) are skipped and counted;
  * exact duplicates (same bytes) are removed, keeping the first path in sorted order;
  * for the stdlib only, test suites, `site-packages` and generated files (tables produced by
    scripts, recognised by a "generated"/"do not edit" header) are left out: they are not code
    a person wrote;
  * `max_bytes` (0 = no limit) takes files in a stable pseudo-random order (a hash of the path)
    while they fit the budget, so a capped corpus is a fixed, representative subset;
  * each file goes to "train" or "val" by another hash of its path, so a file's split never
    depends on which other files are present, and no file is in both splits.

The manifest lists every file with its byte count, split and SHA-256; `Corpus.hash` is the
SHA-256 of that list, so a run's log can name the exact corpus it trained on.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.05

# Folders never read: caches, virtual environments, version control.
_ALWAYS_SKIPPED_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}
# Folders of the stdlib that hold its test suites (test/, tests/, idlelib/idle_test, ...).
_STDLIB_TEST_DIRS = {"test", "tests", "idle_test"}
# A header line that says a script wrote the file (checked on its first three lines only).
_GENERATED = re.compile(
    r"auto-?generated|automatically generated|do not edit|generated (from|by|and used)"
    r"|this file is generated", re.IGNORECASE)
# Text the tokenizer would read as a special token; such files are skipped, not mangled.
_CONTROL_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")

Source = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


@dataclass(frozen=True)
class Document:
    path: str  # relative to the corpus root, with "/" separators
    text: str
    split: str  # "train" or "val"
    sha256: str  # of the file's bytes
    n_bytes: int  # UTF-8 bytes of text


@dataclass
class Corpus:
    source: str  # where the files came from, for people (not part of the hash)
    documents: list[Document]  # in sorted path order
    max_bytes: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    skipped: dict = field(default_factory=dict)  # reason -> list of relative paths

    @property
    def hash(self) -> str:
        """SHA-256 over (split, path, content hash) of every document: names this exact corpus."""
        lines = "".join(f"{d.split}\t{d.path}\t{d.sha256}\n" for d in self.documents)
        return hashlib.sha256(lines.encode()).hexdigest()

    def select(self, split: Optional[str] = None) -> list[Document]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        return [d for d in self.documents if split is None or d.split == split]

    def texts(self, split: Optional[str] = None) -> Iterator[str]:
        """The documents' texts in path order (split=None: all of them), e.g. for the tokenizer."""
        return (d.text for d in self.select(split))

    def n_bytes(self, split: Optional[str] = None) -> int:
        """UTF-8 bytes of the split's text: the denominator of bits per byte."""
        return sum(d.n_bytes for d in self.select(split))

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "hash": self.hash,
            "max_bytes": self.max_bytes,
            "val_fraction": self.val_fraction,
            "n_files": {s: len(self.select(s)) for s in SPLITS},
            "n_bytes": {s: self.n_bytes(s) for s in SPLITS},
            "skipped": {reason: sorted(paths) for reason, paths in self.skipped.items()},
            "files": [{"path": d.path, "split": d.split, "bytes": d.n_bytes, "sha256": d.sha256}
                      for d in self.documents],
        }

    def summary(self) -> str:
        skipped = ", ".join(f"{reason} {len(paths)}" for reason, paths in self.skipped.items())
        return (f"corpus {self.hash[:16]} from {self.source}\n"
                f"  files {len(self.documents)} ({self.n_bytes():,} bytes): "
                f"train {len(self.select('train'))} ({self.n_bytes('train'):,} bytes), "
                f"val {len(self.select('val'))} ({self.n_bytes('val'):,} bytes)\n"
                f"  skipped: {skipped or 'none'}")


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` on every machine and Python (unlike hash())."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(path: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    return "val" if stable_fraction("split:" + path) < val_fraction else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_generated(text: str) -> bool:
    return bool(_GENERATED.search("\n".join(text.split("\n", 3)[:3])))


def find_python_files(root: Path, stdlib_rules: bool = False) -> list[Path]:
    """All .py files under root (sorted), minus caches/venvs and, with stdlib_rules, test suites."""
    skipped_dirs = _ALWAYS_SKIPPED_DIRS | (_STDLIB_TEST_DIRS if stdlib_rules else set())
    files = []
    for path in root.rglob("*.py"):
        folders = path.relative_to(root).parts[:-1]
        if any(part in skipped_dirs or part.startswith(".") for part in folders):
            continue
        if path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def python_folder_problem(path: str) -> str:
    """What keeps `path` from being a folder of Python source to read, on one line ("" if nothing)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"{path!r} is not a folder; give a folder of .py files"
    if not find_python_files(folder):
        return (f"{path!r} holds no .py files (caches, virtual environments and hidden folders are not "
                "read); give a folder of Python source")
    return ""


def resolve_source(source: Source) -> tuple[Path, list[Path], str, bool]:
    """Return (root, files, description, stdlib_rules) for a source given as the docstring says."""
    if source is None:
        root = stdlib_root()
        files = find_python_files(root, stdlib_rules=True)
        return root, files, f"Python {sys.version.split()[0]} stdlib at {root}", True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus path {str(path)!r} does not exist; pass a folder of "
                                    ".py files, a .py file, or a text file listing paths")
        if path.is_dir():
            return path, find_python_files(path), os.path.abspath(path), False
        if path.suffix == ".py":
            return path.parent, [path], os.path.abspath(path), False
        # A list file: one path per line, relative to the list's folder; '#' starts a comment.
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text("utf-8").splitlines()]
        listed = [path.parent / ln for ln in lines if ln]
        return _common_root(listed), sorted(listed), f"files listed in {os.path.abspath(path)}", False
    listed = [Path(p).expanduser() for p in source]
    return _common_root(listed), sorted(listed), f"{len(listed)} listed files", False


def _common_root(files: list[Path]) -> Path:
    if not files:
        raise ValueError("the corpus file list is empty; list at least two .py files")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus file {missing[0]!r} does not exist "
                                f"({len(missing)} listed files missing)")
    return Path(os.path.commonpath([os.path.abspath(f.parent) for f in files]))


def build_corpus(source: Source = None, max_bytes: int = 0,
                 val_fraction: float = DEFAULT_VAL_FRACTION) -> Corpus:
    """Read, filter, deduplicate, cap and split a corpus of Python files (rules in the docstring).

    source: None (the stdlib), a folder, a .py file, a text file listing paths, or a list of paths.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0 (0 = no limit), got {max_bytes}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    root, files, description, stdlib_rules = resolve_source(source)
    root = Path(os.path.abspath(root))  # not resolve(): a symlinked file stays under its root

    def relative(file: Path) -> str:
        return Path(os.path.abspath(file)).relative_to(root).as_posix()

    skipped: dict[str, list[str]] = {"not_utf8": [], "empty": [], "control_text": [],
                                     "duplicate": [], "generated": [], "over_budget": []}
    seen: set[str] = set()
    kept: list[Document] = []
    for rel, file in sorted((relative(f), f) for f in files):
        raw = file.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"].append(rel)
            continue
        reason = ("empty" if not text.strip() else
                  "duplicate" if digest in seen else
                  "control_text" if _CONTROL_TOKEN.search(text) else
                  "generated" if stdlib_rules and is_generated(text) else None)
        if reason:
            skipped[reason].append(rel)
            continue
        seen.add(digest)
        kept.append(Document(rel, text, split_of(rel, val_fraction), digest, len(raw)))

    if max_bytes:
        # Walk files in a hashed order (independent of the split hash) and keep what fits.
        chosen, total = set(), 0
        for doc in sorted(kept, key=lambda d: stable_fraction("select:" + d.path)):
            if total + doc.n_bytes <= max_bytes:
                chosen.add(doc.path)
                total += doc.n_bytes
        skipped["over_budget"] = [d.path for d in kept if d.path not in chosen]
        kept = [d for d in kept if d.path in chosen]

    if len(kept) < 2:
        raise ValueError(f"the corpus from {description} has {len(kept)} usable file(s) "
                         f"(max_bytes={max_bytes}); it needs at least 2, one for validation")
    kept = _ensure_both_splits(kept, val_fraction)
    return Corpus(description, kept, max_bytes, val_fraction,
                  {reason: paths for reason, paths in skipped.items() if paths})


def _ensure_both_splits(docs: list[Document], val_fraction: float) -> list[Document]:
    """A small corpus may hash no file into one split; then move the file nearest the boundary."""
    score = {d.path: stable_fraction("split:" + d.path) for d in docs}
    for split, pick in (("val", min), ("train", max)):
        if not any(d.split == split for d in docs):
            moved = pick(docs, key=lambda d: score[d.path]).path
            docs = [Document(d.path, d.text, split, d.sha256, d.n_bytes) if d.path == moved else d
                    for d in docs]
    return docs


def write_json_atomic(data: dict, path: Union[str, os.PathLike]) -> None:
    """Write JSON to a temporary file and rename it, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # unique per process
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
