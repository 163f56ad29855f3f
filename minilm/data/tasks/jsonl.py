"""Tasks on disk: one JSON object per line, in an MBPP-like schema.

Required: `task_id` (str or int), `text`, `code` (str), `test_list` (list of assert strings; a
generate or repair task needs at least one that is not blank: without tests any program passes).
Optional: `kind` ("generate" | "repair" | "explain", default generate), `entry_point`, `family`,
`split`, `template`, `slots` (list of str), `parts`, `bug`; `buggy_code` is required for repair.
Unknown fields are kept, so MBPP files and your own tasks load as they are.

`load_jsonl` checks every line before returning anything: a malformed line raises one error naming
the file and line (on_error="raise"), or is reported with a warning and skipped (on_error="skip").
A line longer than max_line_bytes (1 MiB) is malformed too, and never held in memory whole.
"""
from __future__ import annotations

import json
import os
import warnings

KINDS = ("generate", "repair", "explain")
TESTED_KINDS = ("generate", "repair")  # whose programs are run against test_list
MAX_LINE_BYTES = 1 << 20  # a task is a few KiB; a 200 MB line once took 18 GB to parse
_STR_FIELDS = ("text", "code", "entry_point", "family", "split", "template", "buggy_code", "bug", "category")


class TaskFormatError(ValueError):
    """A task file line that is not a valid task record."""


def validate_record(record) -> None:
    """Raise TaskFormatError (without location) if `record` is not a valid task record."""
    if not isinstance(record, dict):
        raise TaskFormatError(f"expected a JSON object, got {type(record).__name__}")
    missing = [f for f in ("task_id", "text", "code", "test_list") if f not in record]
    if missing:
        raise TaskFormatError(f"missing required field(s) {', '.join(missing)}")
    if not isinstance(record["task_id"], (str, int)) or isinstance(record["task_id"], bool):
        raise TaskFormatError(f"task_id must be a string or an integer, got {record['task_id']!r}")
    for field in _STR_FIELDS:
        if field in record and not isinstance(record[field], str):
            raise TaskFormatError(f"field {field!r} must be a string, got {type(record[field]).__name__}")
    for field in ("test_list", "slots"):
        if field in record and not (isinstance(record[field], list) and all(isinstance(t, str) for t in record[field])):
            raise TaskFormatError(f"field {field!r} must be a list of strings")
    kind = record.get("kind", "generate")
    if kind not in KINDS:
        raise TaskFormatError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "repair" and "buggy_code" not in record:
        raise TaskFormatError("a repair task needs a 'buggy_code' field")
    if kind in TESTED_KINDS and not any(test.strip() for test in record["test_list"]):
        raise TaskFormatError(f"test_list has no test: a {kind} task without tests would count any "
                              "program as passing")


def save_jsonl(records, path) -> None:
    """Write one record per line (UTF-8, field order kept), atomically: a crash leaves no half file."""
    for number, record in enumerate(records, 1):
        try:
            validate_record(record)
        except TaskFormatError as error:
            raise TaskFormatError(f"record {number} ({record.get('task_id') if isinstance(record, dict) else '?'}): "
                                  f"{error}") from None
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _lines(f, max_bytes: int):
    """(number, line) for each line of a binary file; line is None when it is longer than
    max_bytes, and then at most max_bytes + 64 KiB of it were in memory at once."""
    number = 0
    while line := f.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass  # the rest of the long line, read and dropped
            line = None
        yield number, line


def _parse_line(line: bytes | None, max_line_bytes: int) -> dict:
    if line is None:
        raise TaskFormatError(f"line longer than {max_line_bytes} bytes (max_line_bytes): a task "
                              "is a few KiB")
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise TaskFormatError(f"not UTF-8 ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise TaskFormatError(f"invalid JSON ({error.msg} at column {error.colno})") from None
    validate_record(record)
    return record


def load_jsonl(path, on_error: str = "raise", max_line_bytes: int = MAX_LINE_BYTES) -> list[dict]:
    """Read task records from a JSONL file. Blank lines are ignored.

    on_error="raise": the first malformed line raises TaskFormatError("path:line: problem");
    on_error="skip": each malformed line is reported with a warning and left out. A line longer
    than max_line_bytes is malformed, and is read in pieces, never whole."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    records = []
    with open(path, "rb") as f:
        for number, line in _lines(f, max_line_bytes):
            if line is not None and not line.strip():
                continue
            try:
                records.append(_parse_line(line, max_line_bytes))
            except TaskFormatError as error:
                message = f"{path}:{number}: {error}"
                if on_error == "raise":
                    raise TaskFormatError(message) from None
                warnings.warn(f"skipping malformed task line {message}", stacklevel=2)
    return records
