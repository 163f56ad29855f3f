"""Real functions mined from source as fine-tuning tasks: the standard library, or a folder of your code.

    mined = mine_source("stdlib")          # or a folder: mine_source("~/src/myproject")
    print(format_counts(mined.counts))     # what each filter kept
    mined.split("train"), mined.split("valid")

    python -m minilm.data.mined [stdlib | FOLDER] [--show N]     # the table, and N examples

The files: for "stdlib", the running Python's standard library (the pretraining corpus's rules:
no test suites, caches or generated tables) without the GUI and tool packages of STDLIB_SKIPPED;
for a folder, every .py file below it but caches, virtual environments, hidden folders and tests
(test/, tests/, test_*.py, conftest.py: a test function checks the code around it, it is no
standalone function to ask for). Each function goes through mining.py's filters, then:

    clean     no run of WINDOW words in common with what we evaluate (`evaluated_documents`: the
              requests' texts and reference code, HumanEval's prompts and canonical solutions),
              so fine-tuning on the stdlib cannot teach an answer the evaluation then scores
    verified  its doctests, turned into asserts, pass when run in the evaluation's sandbox
              ("verified": true; the others keep their asserts, marked false)

Every kept function trains, with or without doctests: the request and the code are what
fine-tuning reads. VALID_FRACTION of them, chosen by a stable hash of the qualified name (so a
function's split never depends on the others), form a held-out "valid" split: validation only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from minilm.data.corpus import find_python_files, is_generated, stable_fraction, stdlib_root
from minilm.data.mining import MiningCounts, format_counts, mine_module
from minilm.evaluation.contamination import evaluated_documents, shared_ngrams
from minilm.evaluation.execution import run_programs

STDLIB = "stdlib"
STDLIB_SKIPPED = {"idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data"}  # GUIs, demos, tool data
WINDOW = 10  # words in a row (minilm/evaluation/contamination.py says why 10)
VALID_FRACTION = 0.05
VERIFY_TIMEOUT = 5.0  # seconds per function's doctests
_MINER_CODE = (Path(__file__).with_name("mining.py"), Path(__file__))  # a change to them changes the key


def source_files(source: str) -> tuple[Path, list[Path]]:
    """(root, the .py files to mine in sorted order) for "stdlib" or a folder."""
    if source == STDLIB:
        root = stdlib_root()
        files = find_python_files(root, stdlib_rules=True)
        return root, [f for f in files if f.relative_to(root).parts[0] not in STDLIB_SKIPPED]
    root = Path(source).expanduser()
    files = find_python_files(root, stdlib_rules=True)  # its rules leave out test folders
    return root, [f for f in files if not f.name.startswith("test_") and f.name != "conftest.py"]


def module_name(relative: Path) -> str:
    """json/decoder.py -> json.decoder; json/__init__.py -> json."""
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def source_fingerprint(source: str) -> str:
    """SHA-256 of every file mined (path and bytes) and of the miner's own code: what the
    fine-tuning stage is keyed on, so a changed folder is mined again, never silently reused."""
    root, files = source_files(source)
    digest = hashlib.sha256(sys.version.encode())
    for path in [*_MINER_CODE, *files]:
        name = path.name if path in _MINER_CODE else path.relative_to(root).as_posix()
        digest.update(f"{name}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


@dataclass
class MinedSet:
    source: str  # what was mined, for people
    records: list[dict]  # task records in file order, each with "split" and "verified"
    counts: MiningCounts = field(default_factory=MiningCounts)

    def split(self, name: str) -> list[dict]:
        return [r for r in self.records if r["split"] == name]

    def summary(self) -> str:
        return (f"mined {len(self.records)} functions from {self.source}: {len(self.split('train'))} train, "
                f"{len(self.split('valid'))} valid; {self.counts.with_doctests} with doctests, "
                f"{self.counts.verified} verified in the sandbox")


def drop_contaminated(records: list[dict], documents: dict[str, str]) -> list[dict]:
    """The records whose text and code share no WINDOW words in a row with any of documents."""
    found = shared_ngrams({r["task_id"]: f"{r['text']}\n{r['code']}" for r in records}, documents.values(), WINDOW)
    shared = {task_id for task_id, _ in found}
    return [r for r in records if r["task_id"] not in shared]


def verify(records: list[dict], workers: Union[int, None] = None) -> None:
    """Set each record's "verified": its doctest asserts pass in the sandbox (no asserts: False)."""
    tested = [r for r in records if r["test_list"]]
    results = run_programs([(r["code"], r["test_list"]) for r in tested], timeout=VERIFY_TIMEOUT,
                           workers=workers) if tested else []
    for r in records:
        r["verified"] = False
    for r, result in zip(tested, results):
        r["verified"] = result.passed


def mine_source(source: str = STDLIB, check: bool = True, workers: Union[int, None] = None) -> MinedSet:
    """Mine "stdlib" or a folder (the module docstring's steps). check=False leaves out the
    contamination check and the sandbox (every record "verified": false), for quick looks."""
    root, files = source_files(source)
    counts, records = MiningCounts(), []
    for path in files:
        raw = path.read_bytes()
        if source == STDLIB and is_generated(raw.decode("utf-8", "replace")):
            continue  # tables a script wrote: the corpus leaves them out too
        relative = path.relative_to(root)
        records += mine_module(raw, module_name(relative), counts, relative.as_posix())
    if check:
        records = drop_contaminated(records, evaluated_documents())
    counts.clean = len(records)
    counts.with_doctests = sum(1 for r in records if r["test_list"])
    if check:
        verify(records, workers)
    else:
        for r in records:
            r["verified"] = False
    counts.verified = sum(r["verified"] for r in records)
    for r in records:
        r["split"] = "valid" if stable_fraction("mined:" + r["task_id"]) < VALID_FRACTION else "train"
    description = f"the Python {sys.version.split()[0]} stdlib" if source == STDLIB else str(root)
    return MinedSet(description, records, counts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilm.data.mined", description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", default=STDLIB, help="stdlib (the default) or a folder")
    parser.add_argument("--show", type=int, default=0, help="print this many examples")
    args = parser.parse_args(argv)
    mined = mine_source(args.source)
    print(mined.summary() + "\n\n" + format_counts(mined.counts))
    for record in mined.records[:args.show]:
        print("\n" + json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
