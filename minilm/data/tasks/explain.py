"""Scoring explain tasks: does a predicted description name what the reference names?

A description is a frame ("Write a function ... that returns ...") around a what phrase ("the sum
of a and b"). Only the what phrase and the names carry meaning, so a record's `slots` are the
content words of its what phrase plus the function and argument names. Given a prediction,

    S = the record's slots
    P = content tokens of the prediction (frame, type and stop words removed), plus any of its
        tokens that are slots (an argument may well be called `a`)
    precision = |P & S| / |P|,  recall = |P & S| / |S|,  f1 = 2 p r / (p + r)

Tokens are identifiers, integers (with sign) and quoted strings, lower-cased; sets, not counts.
"""
from __future__ import annotations

import re

from .family import FRAMES

TOKEN = re.compile(r"'[^']*'|-?\d+|[A-Za-z_][A-Za-z0-9_]*")
STOP_WORDS = frozenset(
    "a an the of and or to in is are it its if be by for from with as at on that this which each "
    "every one all there when then than so not otherwise".split())
# Words of the frames (minus their slots) and of argument types say nothing about the task.
FRAME_WORDS = frozenset(word.lower() for frame in FRAMES
                        for word in TOKEN.findall(frame.format(f="", args="", arglist="", what="")))
TYPE_WORDS = frozenset({"integer", "integers", "list", "string", "strings", "dictionary", "python"})


def tokens(text: str) -> list[str]:
    return [t.lower() for t in TOKEN.findall(text)]


def content_tokens(text: str) -> set[str]:
    """Tokens of `text` that can carry meaning: not stop words, not frame words, not type words."""
    return {t for t in tokens(text) if t not in STOP_WORDS and t not in FRAME_WORDS and t not in TYPE_WORDS}


def slot_words(what: str, entry_point: str, arg_names) -> list[str]:
    """The words an explanation of this task should contain, sorted for a stable record."""
    return sorted(content_tokens(what) | {entry_point.lower()} | {a.lower() for a in arg_names})


def explain_f1(predicted_text: str, record: dict) -> tuple[float, float, float]:
    """(precision, recall, f1) of the predicted description against `record["slots"]`."""
    if "slots" not in record:
        raise KeyError(f"record {record.get('task_id')!r} has no 'slots'; explain scoring needs the slot words "
                       f"(records from generate_suite have them)")
    reference = set(record["slots"])
    predicted = content_tokens(predicted_text) | (set(tokens(predicted_text)) & reference)
    hits = len(predicted & reference)
    if hits == 0:
        return 0.0, 0.0, 0.0
    precision, recall = hits / len(predicted), hits / len(reference)
    return precision, recall, 2 * precision * recall / (precision + recall)
