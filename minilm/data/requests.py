"""The requests split: 168 hand-written function requests, a yardstick the task suite did not make.

    from minilm.data.requests import load_requests
    requests = load_requests()   # [{"task_id": "requests/000", "kind": "generate", "split": "requests", ...}]

The held-out splits of the task suite come from the same generator as the training data, so a
model can pass them by learning the generator. These requests were written by hand for this split,
one idea at a time, in the informal way people ask for code in a chat (varied openers and lengths,
everyday contexts, some typos and lower case); none was generated from the suite's templates or
derived from HumanEval or MBPP (first drafts too close to a known problem were replaced).

Each is a generate task in the suite's JSONL schema (minilm/data/tasks/jsonl.py): task_id, kind,
split ("requests"), category (string, dict, math, loop, parse, sort, set, two-pointer, nested,
recursion, state), entry_point, text, code (a reference solution) and test_list (asserts).

The file is frozen: tests/test_requests.py pins its SHA-256, so that before and after, this run and
the last, are measured on the same requests (a change must be deliberate, and keyed: reuse.py
redoes the evaluation of a changed file). tests/test_contamination.py checks that no training
example shares 10 words in a row with a request.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from minilm.data.tasks import load_jsonl

REQUESTS_FILE = Path(__file__).with_name("requests.jsonl")  # package data (setup.cfg)
SPLIT = "requests"


def load_requests() -> list[dict]:
    """The 168 requests, in file order."""
    return load_jsonl(REQUESTS_FILE)


def requests_fingerprint() -> str:
    """SHA-256 of the file: what the evaluation of the requests is keyed on."""
    return hashlib.sha256(REQUESTS_FILE.read_bytes()).hexdigest()
