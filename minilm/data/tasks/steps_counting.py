"""Multi-step counting and grouping families: a dictionary built up over a loop.

catalog_lists.py has one such body (count_frequencies). These vary the shape: a key computed from
each element (its length, its sign), a value added from a second list, a first-seen index kept
only once, a best key chosen with a tie-break. Oracles count with Counter, comprehensions or
sorting instead of a loop.
"""
from __future__ import annotations

import random
from collections import Counter

from .family import Family, dicts, int_list, string_lists

L1 = (("xs", "list"),)


def _sentences(rng: random.Random, env: dict) -> list[tuple]:
    word = lambda: rng.choice(("the", "a", "cat", "Cat", "sat", "THE"))   # noqa: E731
    return [("",), ("   ",), (word(),), ("the cat the",), (" ".join(word() for _ in range(rng.randint(3, 7))),)]


def _keyed_values(rng: random.Random, env: dict) -> list[tuple]:
    """Equal-length (keys, numbers) pairs with repeated keys."""
    cases = [([], []), (["a"], [rng.randint(-9, 9)]), (["b", "a", "b"], [4, -1, 3])]
    for size in (4, 6):
        cases.append(([rng.choice("abc") for _ in range(size)], int_list(rng, size)))
    return cases


def _tied_dicts(rng: random.Random, env: dict) -> list[tuple]:
    return [(d,) for d in dicts(rng)] + [({"b": 3, "a": 3, "c": 1},), ({"y": -2, "x": -2},)]


def _lists(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([0],), ([rng.randint(1, 9)],), ([-2, 0, 5, 0],)] + [(int_list(rng, rng.randint(4, 8), -3, 3),)
                                                                       for _ in range(2)]


def _by_length(env: dict, ws: list) -> dict:
    return {size: [w for w in ws if len(w) == size] for size in sorted({len(w) for w in ws})}


def _sums(env: dict, ws: list, xs: list) -> dict:
    return {key: sum(x for k, x in zip(ws, xs) if k == key) for key in dict.fromkeys(ws)}


def _max_key(env: dict, d: dict):
    return min(d, key=lambda key: (-d[key], key)) if d else None


def _sign_counts(env: dict, xs: list) -> dict:
    return {"negative": sum(x < 0 for x in xs), "zero": xs.count(0), "positive": sum(x > 0 for x in xs)}


def _first_index(env: dict, xs: list) -> dict:
    return {x: xs.index(x) for x in xs}


WORD_COUNT_BODY = ("counts = {{}}\nfor token in {s}.lower().split():\n    counts[token] = counts.get(token, 0) + 1\n"
                   "return counts")
GROUP_BODY = ("groups = {{}}\nfor token in {ws}:\n    if len(token) not in groups:\n        groups[len(token)] = []\n"
              "    groups[len(token)].append(token)\nreturn groups")
SUM_BY_KEY_BODY = ("totals = {{}}\nfor key, value in zip({ws}, {xs}):\n    totals[key] = totals.get(key, 0) + value\n"
                   "return totals")
MAX_KEY_BODY = ("best = None\nfor key in {d}:\n"
                "    if best is None or {d}[key] > {d}[best] or ({d}[key] == {d}[best] and key < best):\n"
                "        best = key\nreturn best")
SIGN_BODY = ("counts = {{'negative': 0, 'zero': 0, 'positive': 0}}\nfor x in {xs}:\n    if x < 0:\n"
             "        counts['negative'] += 1\n    elif x == 0:\n        counts['zero'] += 1\n    else:\n"
             "        counts['positive'] += 1\nreturn counts")
FIRST_INDEX_BODY = ("positions = {{}}\nfor i in range(len({xs})):\n    if {xs}[i] not in positions:\n"
                    "        positions[{xs}[i]] = i\nreturn positions")

COUNTING_STEP_FAMILIES = (
    Family("word_frequencies", "counting", (("s", "str"),), WORD_COUNT_BODY, lambda e, s: dict(Counter(s.lower().split())),
           ("a dictionary mapping each lower-cased word of {s} to the number of times it occurs, words being "
            "separated by whitespace",
            "how often every word of {s} appears, ignoring case, as a dict from word to count",
            "the word counts of {s} after converting it to lower case and splitting it on whitespace",
            "a dict giving, for each distinct word of {s} in lower case, how many times it is used"),
           cases=_sentences),
    Family("group_by_length", "counting", (("ws", "strlist"),), GROUP_BODY, _by_length,
           ("a dictionary from each word length found in {ws} to the list of strings of {ws} with that length, "
            "in their original order",
            "the strings of {ws} grouped by how many characters they have, as a dict from length to list",
            "a dict whose keys are the lengths of the items of {ws} and whose values list the items of each length "
            "in order",
            "the members of {ws} sorted into buckets by length, each bucket a list keyed by that length"),
           cases=lambda rng, env: [(ws,) for ws in string_lists(rng)] + [(["ab", "c", "de", "f", "ab"],)]),
    Family("sum_by_key", "counting", (("ws", "strlist"), ("xs", "list")), SUM_BY_KEY_BODY, _sums,
           ("a dictionary mapping each string of {ws} to the sum of the numbers of {xs} at the same positions "
            "({ws} and {xs} have equal length)",
            "the totals of {xs} per label, where {ws} gives the label of each number, as a dict",
            "a dict adding up {xs}[i] under the key {ws}[i] for every index i",
            "for each distinct name in {ws}, the sum of the values of {xs} that line up with it, as a dictionary"),
           cases=_keyed_values),
    Family("max_value_key", "counting", (("d", "dict"),), MAX_KEY_BODY, _max_key,
           ("the key of {d} with the largest value, the alphabetically first such key on a tie, or None for an "
            "empty dictionary",
            "which key of {d} holds the biggest value (the smallest key if several do), and None if {d} is empty",
            "the key whose value in {d} is the maximum, ties broken by the lower key, None when there are no keys",
            "the name in {d} mapped to the greatest number, preferring the earliest in alphabetical order on equal "
            "numbers, and None for no entries"), cases=_tied_dicts),
    Family("sign_counts", "counting", L1, SIGN_BODY, _sign_counts,
           ("a dictionary with the keys 'negative', 'zero' and 'positive' counting the elements of {xs} of each "
            "kind",
            "how many numbers of {xs} are below zero, equal to zero and above zero, as a dict under the keys "
            "'negative', 'zero' and 'positive'",
            "the counts of negative, zero and positive values in {xs} in a dict with those three names as keys",
            "a dict that tallies the elements of {xs} by sign, using 'negative', 'zero' and 'positive' as its keys"),
           cases=_lists),
    Family("first_index_map", "counting", L1, FIRST_INDEX_BODY, _first_index,
           ("a dictionary mapping each distinct value of {xs} to the index of its first occurrence",
            "for every different number in {xs}, the earliest position where it appears, as a dict",
            "a dict from the values of {xs} to the first index at which each one is found",
            "the position where each value of {xs} shows up for the first time, keyed by that value"),
           cases=lambda rng, env: _lists(rng, env) + [([3, 1, 3, 1, 2],)]),
)
