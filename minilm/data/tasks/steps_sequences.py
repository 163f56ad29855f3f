"""Multi-step families that walk lists by index: two lists at once, two ends at once, fixed strides.

Where steps_lists.py carries a value along one pass, these move one or two indices by hand: a
merge advances whichever side is smaller, an interleave reads both lists at one index, a chunk or
a rotation cuts slices at computed positions. Loops are `for` loops over a bounded range (bugs.py
runs mutants in-process, so no solution may contain a `while` that a mutant could make endless).
"""
from __future__ import annotations

import random
from bisect import bisect_left
from collections import deque
from itertools import zip_longest

from .catalog import const
from .family import Family, int_list

L1 = (("xs", "list"),)
L2 = (("xs", "list"), ("ys", "list"))


def _lists(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([rng.randint(-9, 9)],), ([1, 2],), ([5, -1, 5, 0, 3],)] + [
        (int_list(rng, n),) for n in (rng.randint(3, 5), rng.randint(6, 9))]


def _sorted_pairs(rng: random.Random, env: dict) -> list[tuple]:
    """Two ascending lists: both empty, one empty, equal values on both sides, different lengths."""
    return [([], []), ([], [1, 4]), ([rng.randint(-5, 5)], []), ([1, 3, 3], [2, 3, 8])] + [
        (sorted(int_list(rng, rng.randint(1, 5))), sorted(int_list(rng, rng.randint(1, 5)))) for _ in range(2)]


def _uneven_pairs(rng: random.Random, env: dict) -> list[tuple]:
    return [([], []), ([], [7]), ([rng.randint(-9, 9)], [])] + [
        (int_list(rng, rng.randint(1, 5)), int_list(rng, rng.randint(1, 5))) for _ in range(3)]


def _sorted_with_k(rng: random.Random, env: dict) -> list[tuple]:
    k = env["k"]
    return [([],), ([k],), ([k - 3, k, k, k + 2],), ([k + 1, k + 5],), ([k - 9, k - 1],)] + [
        (sorted(int_list(rng, rng.randint(3, 7))),)]


def _merge(env: dict, xs: list, ys: list) -> list:
    return sorted(xs + ys)


def _interleave(env: dict, xs: list, ys: list) -> list:
    gap = object()   # a filler no list element can equal
    return [x for pair in zip_longest(xs, ys, fillvalue=gap) for x in pair if x is not gap]


def _rotate(env: dict, xs: list) -> list:
    ring = deque(xs)
    ring.rotate(-env["k"])
    return list(ring)


def _chunks(env: dict, xs: list) -> list:
    out: list = []
    for index, x in enumerate(xs):
        if index % env["k"] == 0:
            out.append([])
        out[-1].append(x)
    return out


def _leaders(env: dict, xs: list) -> list:
    return [x for i, x in enumerate(xs) if all(x > y for y in xs[i + 1:])]


MERGE_BODY = ("result = []\ni = 0\nj = 0\nfor _ in range(len({xs}) + len({ys})):\n"
              "    if j >= len({ys}) or (i < len({xs}) and {xs}[i] <= {ys}[j]):\n"
              "        result.append({xs}[i])\n        i += 1\n    else:\n        result.append({ys}[j])\n"
              "        j += 1\nreturn result")
INTERLEAVE_BODY = ("result = []\nfor i in range(max(len({xs}), len({ys}))):\n    if i < len({xs}):\n"
                   "        result.append({xs}[i])\n    if i < len({ys}):\n        result.append({ys}[i])\nreturn result")
ROTATE_BODY = "if not {xs}:\n    return []\nshift = {k} % len({xs})\nreturn {xs}[shift:] + {xs}[:shift]"
CHUNK_BODY = "result = []\nfor i in range(0, len({xs}), {k}):\n    result.append({xs}[i:i + {k}])\nreturn result"
INSERT_BODY = "for i in range(len({xs})):\n    if {xs}[i] >= {k}:\n        return i\nreturn len({xs})"
MIRROR_BODY = ("result = []\nfor i in range(len({xs}) // 2):\n    result.append({xs}[i] + {xs}[len({xs}) - 1 - i])\n"
               "return result")
LEADERS_BODY = ("result = []\nbest = None\nfor x in reversed({xs}):\n    if best is None or x > best:\n"
                "        result.append(x)\n        best = x\nreturn result[::-1]")

SEQUENCE_STEP_FAMILIES = (
    Family("merge_sorted", "sequence", L2, MERGE_BODY, _merge,
           ("the two ascending lists {xs} and {ys} merged into one ascending list",
            "one sorted list holding every element of the sorted lists {xs} and {ys}",
            "the merge of the already sorted {xs} and {ys}, in increasing order",
            "all the numbers from the ascending lists {xs} and {ys} combined and kept in ascending order"),
           cases=_sorted_pairs),
    Family("interleave", "sequence", L2, INTERLEAVE_BODY, _interleave,
           ("the elements of {xs} and {ys} taken alternately, starting with {xs}, followed by whatever is left "
            "of the longer list",
            "a list alternating between items of {xs} and {ys} (the first from {xs}), with the remaining items of "
            "the longer one at the end",
            "{xs} and {ys} interleaved one element at a time, beginning with {xs}, leftovers added at the end",
            "one list that takes from {xs}, then {ys}, then {xs} again and so on, finishing with the rest of the "
            "longer list"), cases=_uneven_pairs),
    Family("rotate_left", "sequence", L1, ROTATE_BODY, _rotate,
           ("{xs} rotated to the left by {k} positions, the shift taken modulo the length of {xs}",
            "a copy of {xs} in which every element moves {k} places towards the front and the ones that fall off "
            "reappear at the back, wrapping around as often as needed",
            "{xs} shifted cyclically left by {k} steps (an empty list stays empty)",
            "the list {xs} turned {k} places to the left in a circle"), const(k=(1, 7)), _lists),
    Family("chunk", "sequence", L1, CHUNK_BODY, _chunks,
           ("{xs} cut into consecutive pieces of {k} elements (the last piece may be shorter), as a list of lists",
            "a list of lists that splits {xs} into chunks of length {k}, the final chunk holding what remains",
            "the groups of {k} neighbouring items of {xs}, in order, the last one possibly smaller",
            "the elements of {xs} packed {k} at a time into sublists, any leftovers in a shorter last sublist"),
           const(k=(2, 4)), _lists),
    Family("insertion_position", "sequence", L1, INSERT_BODY, lambda e, xs: bisect_left(xs, e["k"]),
           ("the index at which {k} should be inserted into the ascending list {xs} to keep it sorted, before any "
            "equal values",
            "the first position in the sorted list {xs} whose value is at least {k}, or the length of {xs} if "
            "there is none",
            "how many elements of the ascending list {xs} are smaller than {k}",
            "the leftmost place where {k} fits into the sorted {xs} without breaking its order"),
           const(k=(-5, 5)), _sorted_with_k),
    Family("mirror_sums", "sequence", L1, MIRROR_BODY,
           lambda e, xs: [a + b for a, b in zip(xs[:len(xs) // 2], reversed(xs))],
           ("the sums of the first and last elements of {xs}, then the second and second-to-last, and so on "
            "up to the middle (a middle element on its own is left out)",
            "a list pairing each element in the first half of {xs} with its mirror image from the end and "
            "adding them, leaving out a lone middle element",
            "{xs}[i] + {xs}[-1 - i] for each i in the first half of {xs}, as a list",
            "the totals of the pairs of {xs} at equal distance from both ends, working inwards, a middle "
            "value without a partner ignored"), cases=_lists),
    Family("leaders", "sequence", L1, LEADERS_BODY, _leaders,
           ("the elements of {xs} that are strictly greater than every element after them, in their original order",
            "the values of {xs} bigger than everything to their right, as a list in order",
            "a list of the items of {xs} with no element greater than or equal to them later in the list",
            "those numbers of {xs} that beat all the numbers that follow them, kept in the same order"),
           cases=_lists),
)
