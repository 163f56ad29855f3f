"""The list and dictionary families.

Same shape as `catalog.py`: one canonical solution per family, an independent oracle, three what
phrases (the last held out). Lists hold small integers; dictionaries map short string keys to
distinct integers. Every family is tested on the empty list or dictionary.
"""
from __future__ import annotations

import random

from .catalog import const
from .family import KEYS, Family, dicts, int_list

L1 = (("xs", "list"),)
D1 = (("d", "dict"),)


def _lists_with(rng: random.Random, env: dict) -> list[tuple]:
    """Lists that sometimes contain the constant k (once or twice) and sometimes not."""
    k = env["k"]
    return [([],), ([k],), (int_list(rng, 3) + [k] + int_list(rng, 2) + [k],),
            ([x for x in int_list(rng, 5) if x != k],), (int_list(rng, rng.randint(3, 6)),)]


def _list_pairs(rng: random.Random, env: dict) -> list[tuple]:
    return [([], []), ([rng.randint(-9, 9)], [rng.randint(-9, 9)])] + [
        (int_list(rng, n), int_list(rng, n)) for n in (2, 4, 5)]


def _with_duplicates(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([0],), ([3, -1, 3],)] + [(int_list(rng, rng.randint(4, 7), -3, 3),) for _ in range(2)]


def _key_default(rng: random.Random) -> dict:
    return {"key": rng.choice(KEYS), "k": rng.randint(-5, 5)}


def _dicts_with_key(rng: random.Random, env: dict) -> list[tuple]:
    cases = [(d,) for d in dicts(rng)]
    cases.append(({env["key"]: rng.randint(-9, 9), "zz": 0},))
    return cases


def _invert(d: dict) -> dict:
    return dict((value, key) for key, value in d.items())


def _counts(xs: list) -> dict:
    out: dict = {}
    for x in xs:
        out[x] = xs.count(x)
    return out


COUNT_BODY = "counts = {{}}\nfor x in {xs}:\n    counts[x] = counts.get(x, 0) + 1\nreturn counts"

LIST_FAMILIES = (
    # -- lists --
    Family("list_sum", "list", L1, "return sum({xs})", lambda e, xs: sum(xs),
           ("the sum of the numbers in {xs}", "the total of all elements of {xs}", "all values in {xs} added together")),
    Family("list_max", "list", L1, "return max({xs}, default=0)", lambda e, xs: max(xs) if xs else 0,
           ("the largest number in {xs}, or 0 if {xs} is empty", "the maximum of {xs} (0 for an empty list)",
            "the biggest element of {xs}, or 0 when there is none")),
    Family("list_min", "list", L1, "return min({xs}, default=0)", lambda e, xs: min(xs) if xs else 0,
           ("the smallest number in {xs}, or 0 if {xs} is empty", "the minimum of {xs} (0 for an empty list)",
            "the least element of {xs}, or 0 when there is none")),
    Family("list_length", "list", L1, "return len({xs})", lambda e, xs: len(xs),
           ("the number of elements in {xs}", "the length of the list {xs}", "how many items {xs} holds")),
    Family("list_reverse", "list", L1, "return {xs}[::-1]", lambda e, xs: list(reversed(xs)),
           ("{xs} in reverse order", "the list {xs} reversed", "a copy of {xs} running from the last element to the first")),
    Family("sort_ascending", "list", L1, "return sorted({xs})", lambda e, xs: sorted(xs),
           ("{xs} sorted in ascending order", "the elements of {xs} from smallest to largest",
            "a copy of {xs} in increasing order")),
    Family("sort_descending", "list", L1, "return sorted({xs}, reverse=True)", lambda e, xs: sorted(xs)[::-1],
           ("{xs} sorted in descending order", "the elements of {xs} from largest to smallest",
            "a copy of {xs} in decreasing order")),
    Family("count_value", "list", L1, "return {xs}.count({k})", lambda e, xs: sum(x == e["k"] for x in xs),
           ("the number of times {k} appears in {xs}", "how often the value {k} occurs in {xs}",
            "the count of elements of {xs} equal to {k}"), const(k=(-3, 5)), _lists_with),
    Family("index_of", "list", L1, "return {xs}.index({k}) if {k} in {xs} else -1",
           lambda e, xs: next((i for i, x in enumerate(xs) if x == e["k"]), -1),
           ("the index of the first {k} in {xs}, or -1 if {k} is absent",
            "the position of {k} in {xs} (-1 when it is missing)",
            "where {k} first occurs in {xs}, or -1 if it never does"), const(k=(-3, 5)), _lists_with),
    Family("contains", "list", L1, "return {k} in {xs}", lambda e, xs: any(x == e["k"] for x in xs),
           ("True if {k} is in {xs} and False otherwise", "whether {xs} contains {k}",
            "whether the value {k} appears in {xs}"), const(k=(-3, 5)), _lists_with),
    Family("unique", "list", L1, "return sorted(set({xs}))", lambda e, xs: sorted(dict.fromkeys(xs)),
           ("the distinct values of {xs} in ascending order", "the sorted unique elements of {xs}",
            "{xs} without duplicates, sorted"), cases=_with_duplicates),
    Family("first_n", "list", L1, "return {xs}[:{k}]", lambda e, xs: [x for i, x in enumerate(xs) if i < e["k"]],
           ("the first {k} elements of {xs}", "the first {k} items of the list {xs}", "the leading {k} values of {xs}"),
           const(k=(1, 4))),
    Family("last_n", "list", L1, "return {xs}[-{k}:]",
           lambda e, xs: [x for i, x in enumerate(xs) if i >= len(xs) - e["k"]],
           ("the last {k} elements of {xs}", "the final {k} items of the list {xs}", "the trailing {k} values of {xs}"),
           const(k=(1, 4))),
    Family("zip_sum", "list", (("xs", "list"), ("ys", "list")), "return [x + y for x, y in zip({xs}, {ys})]",
           lambda e, xs, ys: [xs[i] + ys[i] for i in range(min(len(xs), len(ys)))],
           ("the element-wise sums of {xs} and {ys}", "a list whose i-th item is {xs}[i] + {ys}[i]",
            "the pairwise sums of the lists {xs} and {ys}"), cases=_list_pairs),
    # -- dictionaries --
    Family("count_frequencies", "dict", L1, COUNT_BODY, lambda e, xs: _counts(xs),
           ("a dictionary mapping each element of {xs} to how many times it occurs",
            "the frequency of every value in {xs} as a dict",
            "a dict counting the occurrences of each item of {xs}"), cases=_with_duplicates),
    Family("invert_dict", "dict", D1, "return {{value: key for key, value in {d}.items()}}", lambda e, d: _invert(d),
           ("{d} with keys and values swapped", "the inverse of the dictionary {d}",
            "a new dict mapping each value of {d} back to its key")),
    Family("get_default", "dict", D1, "return {d}.get({key}, {k})",
           lambda e, d: d[e["key"]] if e["key"] in d else e["k"],
           ("the value stored under {key} in {d}, or {k} if the key is missing",
            "{d}[{key}] if that key is present, otherwise {k}",
            "the entry for {key} in {d}, defaulting to {k}"), _key_default, _dicts_with_key),
    Family("has_key", "dict", D1, "return {key} in {d}", lambda e, d: e["key"] in d.keys(),
           ("True if {key} is a key of {d} and False otherwise", "whether {d} has the key {key}",
            "whether the key {key} is present in {d}"), lambda rng: {"key": rng.choice(KEYS)}, _dicts_with_key),
    Family("sum_values", "dict", D1, "return sum({d}.values())", lambda e, d: sum(d[key] for key in d),
           ("the sum of the values in {d}", "the total of all values of the dictionary {d}",
            "all values of {d} added up")),
    Family("sorted_keys", "dict", D1, "return sorted({d})", lambda e, d: sorted(d.keys()),
           ("the keys of {d} in sorted order", "a sorted list of the keys of {d}",
            "the dictionary keys of {d}, alphabetically")),
)
