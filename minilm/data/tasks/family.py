"""Task families: one kind of programming task, written once, instantiated many times.

A family ("add two numbers", "the sum of the squares of the odd numbers") holds one canonical
solution body with slots for names and constants, an independent Python oracle that computes the
expected answers, and a few *what* phrases that say what the function returns.

An instance fills the slots at random (function name, argument names, constants, test inputs) and
wraps a what phrase in a *frame*, the sentence shape around it:

    frame  "Write a function {f}({args}) that returns {what}."
    what   "the sum of {a} and {b}"
    text   "Write a function add_total(x, y) that returns the sum of x and y."

Frames vary word order, what phrases vary vocabulary. Frames 4-5 and the last what phrase of
every family are held out of training (the `test_phrasing` split, and `test_steps` for the
multi-step families); a template id names the pair, e.g. "f4.w2". The what phrase carries all the
meaning, so explain scoring measures its words. A body may span several lines (steps*.py): each
line is indented under the def as it is.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

# Frames 4 and 5 appear only in test_phrasing; every other frame is used for training. Frames 6-11
# came later: they put the function name last, the arguments first or the what phrase early, so that
# training shows the name and the arguments in many positions (a model trained on frames 0-3 alone,
# which all name the function first, copied names badly from frames 4-5). Their wording is their
# own ("call it", "accepts", "should return"): no training frame reuses "Given", "Name the
# function" or "The function is". Frames 12-14 put verbs of the name pool (compute, find, get,
# make) in the prose before the name, so that a model learns to copy the name from where the
# sentence gives it rather than the first name-like verb (models trained without them named
# frame 4's functions "compute_..."). All are training-only (TRAIN_ONLY_FRAMES): paired with the
# held-out what phrase they are used nowhere, so test_phrasing keeps exactly its original templates
# and tasks.
FRAMES = (
    "Write a function {f}({args}) that returns {what}.",
    "Write a Python function named {f} that takes {arglist} and returns {what}.",
    "Define {f}({args}) so that it returns {what}.",
    "Implement {f}, which takes {arglist} and returns {what}.",
    "Given {arglist}, compute {what}. Name the function {f}.",
    "Return {what}. The function is {f}({args}).",
    "Write code that takes {arglist} and returns {what}; call it {f}.",
    "Using {arglist}, produce {what} in a function called {f}.",
    "The function {f}({args}) should return {what}.",
    "Create a function that accepts {arglist}, returns {what}, and is named {f}.",
    "Your task: {what}, computed by {f}({args}).",
    "Make {f} take {arglist} and give {what} as its output.",
    "The goal is to compute {what} from {arglist}; the function must be called {f}.",
    "We want to find {what} for {arglist}. Write it as {f}({args}).",
    "To get {what}, make a function {f} that takes {arglist}.",
)
SEEN_FRAMES = (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14)
TRAIN_ONLY_FRAMES = (6, 7, 8, 9, 10, 11, 12, 13, 14)

# Name pools. Loop variables used inside solutions (x, y, ch, i, key, value, counts, result) are
# kept out so an argument can never shadow them.
_VERBS = ("get", "compute", "calc", "find", "make", "do", "solve", "eval", "run", "apply", "build")
_NOUNS = ("result", "value", "answer", "output", "total", "thing", "item", "data", "stuff", "number", "res")
FUNC_NAMES = tuple(f"{v}_{n}" for v in _VERBS for n in _NOUNS) + (
    "solution", "helper", "process", "task", "func", "f", "g", "foo", "bar", "baz", "compute", "answer")
ARG_NAMES = {
    "int": ("a", "b", "c", "n", "m", "z", "p", "q", "num", "val", "k", "u", "v", "w", "t", "r"),
    "list": ("xs", "nums", "items", "values", "arr", "lst", "data", "seq", "numbers", "elems", "vals", "ys"),
    "str": ("s", "text", "word", "line", "txt", "name", "phrase", "msg", "w", "label"),
    "strlist": ("words", "parts", "names", "tokens", "strs", "pieces", "chunks"),
    "dict": ("d", "mapping", "table", "dct", "lookup", "m", "scores", "ages"),
    "matrix": ("grid", "matrix", "rows", "mat", "board", "cells"),   # the grid families of steps_grids.py
}
TYPE_WORDS = {"int": "an integer", "list": "a list of integers", "str": "a string",
              "strlist": "a list of strings", "dict": "a dictionary",
              "matrix": "a list of lists of integers"}


class Raw(str):
    """A slot value that is already source text (a code fragment or a phrase), not a constant."""


@dataclass(frozen=True)
class Family:
    """One task family. `body` and the what phrases use `{f}`, the argument slots and the constant
    slots; `oracle(env, *args)` computes the expected result independently of `body`."""
    name: str
    category: str
    args: tuple[tuple[str, str], ...]   # (slot, type), e.g. (("a", "int"), ("b", "int"))
    body: str
    oracle: Callable[..., Any]
    whats: tuple[str, ...]              # the last one is held out of training
    consts: Callable[[random.Random], dict] = lambda rng: {}
    cases: Callable[[random.Random, dict], list] | None = None

    def templates(self) -> list[str]:
        """Every template id, "f{frame}.w{what}"; `template_parts` reads one back."""
        return [f"f{i}.w{j}" for i in range(len(FRAMES)) for j in range(len(self.whats))]

    def seen_templates(self) -> list[str]:
        return [f"f{i}.w{j}" for i in SEEN_FRAMES for j in range(len(self.whats) - 1)]

    def held_out_templates(self) -> list[str]:
        """A held-out frame with any what phrase, or a frame seen in training (not a training-only
        one) with the held-out what phrase."""
        seen = set(self.seen_templates())
        return [t for t in self.templates()
                if t not in seen and template_parts(t)[0] not in TRAIN_ONLY_FRAMES]


def template_parts(template: str) -> tuple[int, int]:
    """The frame index and the what-phrase index of a template id: "f4.w2" -> (4, 2)."""
    frame, what = template.split(".")
    return int(frame[1:]), int(what[1:])


@dataclass(frozen=True)
class Instance:
    """A filled-in family: everything a task record needs."""
    family: Family
    template: str
    text: str
    what: str           # the rendered what phrase (the meaning-carrying part of `text`)
    code: str
    entry_point: str
    arg_names: tuple[str, ...]
    test_list: tuple[str, ...]
    env: dict           # the constants (and, for compositions, the parts) that were drawn


def instantiate(family: Family, rng: random.Random, template: str, env: dict | None = None) -> Instance:
    """Draw names, constants and test inputs for `family`, and render text, code and tests."""
    env = family.consts(rng) if env is None else env
    entry_point = rng.choice(FUNC_NAMES)
    types = [t for _, t in family.args]
    names = _draw_arg_names(rng, types)
    slots = {slot: name for (slot, _), name in zip(family.args, names)}
    slots["f"] = entry_point
    for key, value in env.items():
        if not key.startswith("_"):   # "_" keys are for the oracle only (e.g. part functions)
            slots[key] = value if isinstance(value, Raw) else repr(value)
    frame_index, what_index = template_parts(template)
    what = family.whats[what_index].format(**slots)
    frame = FRAMES[frame_index]
    arglist = " and ".join(f"{TYPE_WORDS[t]} {n}" for t, n in zip(types, names))
    text = frame.format(f=entry_point, args=", ".join(names), arglist=arglist, what=what)
    text = text[0].upper() + text[1:]
    body = "\n".join("    " + line for line in family.body.format(**slots).split("\n"))
    code = f"def {entry_point}({', '.join(names)}):\n{body}"
    cases = family.cases(rng, env) if family.cases else default_cases(rng, types)
    cases = list({repr(args): args for args in cases}.values())   # drop repeated inputs, keep first order
    tests = tuple(f"assert {entry_point}({', '.join(map(repr, args))}) == {family.oracle(env, *args)!r}"
                  for args in cases)
    return Instance(family, template, text, what, code, entry_point, tuple(names), tests, env)


def _draw_arg_names(rng: random.Random, types: list[str]) -> list[str]:
    names: list[str] = []
    for t in types:
        names.append(rng.choice([n for n in ARG_NAMES[t] if n not in names]))
    return names


# ---- test inputs: every family gets edge cases (zero, negatives, empty list, empty string) ----

def ints(rng: random.Random, n: int, lo: int = -20, hi: int = 20) -> list[tuple]:
    edge = (0, -rng.randint(1, 9), rng.randint(1, 9))
    rows = [tuple(edge[(i + j) % 3] for j in range(n)) for i in range(3)]
    return rows + [tuple(rng.randint(lo, hi) for _ in range(n)) for _ in range(2)]


def int_list(rng: random.Random, length: int, lo: int = -9, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(length)]


def int_lists(rng: random.Random) -> list[list[int]]:
    return [[], [rng.randint(-9, 9)], [0, -rng.randint(1, 9), rng.randint(1, 9)],
            int_list(rng, rng.randint(4, 7)), int_list(rng, rng.randint(3, 6))]


def string(rng: random.Random, length: int, alphabet: str = "abcdeiouxyzABE") -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def strings(rng: random.Random, alphabet: str = "abcdeiouxyzABE") -> list[str]:
    return ["", string(rng, 1, alphabet)] + [string(rng, rng.randint(2, 8), alphabet) for _ in range(3)]


def string_lists(rng: random.Random) -> list[list[str]]:
    return [[], [string(rng, 3, "abcdef")]] + [
        [string(rng, rng.randint(1, 4), "abcdef") for _ in range(rng.randint(2, 4))] for _ in range(3)]


KEYS = ("a", "b", "c", "x", "y", "key", "id", "age")


def dicts(rng: random.Random) -> list[dict]:
    """Dictionaries from string keys to distinct integers (distinct, so that inverting is well defined)."""
    out: list[dict] = [{}]
    for size in (1, 2, 3, 4):
        keys = rng.sample(KEYS, size)
        out.append(dict(zip(keys, rng.sample(range(-9, 10), size))))
    return out


def default_cases(rng: random.Random, types: list[str]) -> list[tuple]:
    if all(t == "int" for t in types):
        return ints(rng, len(types))
    columns = {"list": int_lists, "str": strings, "strlist": string_lists, "dict": dicts}
    return list(zip(*(columns[t](rng) for t in types)))
