"""Multi-step list families: one pass over a list of integers that carries state from element to element.

The families of catalog_lists.py are one expression each; a model fine-tuned on them answered every
request with a one-liner, loops included (issue 33). Each solution here is a loop with an
accumulator, a running best, a set of what was seen, an early return or a pair of nested loops.
Each oracle gets the same answer another way (slices, sorting, itertools), so a slip in a body is
not copied into its tests. Test lists hold runs, ties, negatives, one element and no element.
"""
from __future__ import annotations

import random
from collections import Counter
from itertools import accumulate, combinations, groupby, takewhile

from .catalog import const
from .family import Family, int_list

L1 = (("xs", "list"),)


def _lists(rng: random.Random, env: dict) -> list[tuple]:
    """Empty, one element, a tie of the maximum, and small-range lists (so runs and repeats occur)."""
    return [([],), ([rng.randint(-9, 9)],), ([0, -3, 5, 5, -3],), ([4, 4, 2, 7, 1, 1, 1],)] + [
        (int_list(rng, rng.randint(5, 9), -3, 3),) for _ in range(2)] + [(int_list(rng, 6),)]


def _pair_lists(rng: random.Random, env: dict) -> list[tuple]:
    """Lists holding pairs that add up to k, and lists that hold none."""
    k = env["k"]
    return [([],), ([k],), ([k - 1, 1, 1, k - 1],), ([k, 0, 0, k, 0],)] + [
        (int_list(rng, rng.randint(4, 8), -4, 6),) for _ in range(2)]


def _zero_split(rng: random.Random, env: dict) -> list[tuple]:
    return [([],), ([0],), ([rng.randint(1, 9)],), ([0, 0, 4, -2, 0, 3],), ([5, 0, 0, 6, 7],)] + [
        (int_list(rng, rng.randint(5, 9), -2, 2),) for _ in range(2)]


def _first_repeated(env: dict, xs: list):
    for i, x in enumerate(xs):
        if x in xs[:i]:
            return x
    return None


def _second_largest(env: dict, xs: list):
    distinct = sorted(set(xs))
    return distinct[-2] if len(distinct) >= 2 else None


def _mode(env: dict, xs: list):
    counts = Counter(xs)
    return min((value for value in counts if counts[value] == max(counts.values())), default=None)


def _longest_rising(env: dict, xs: list) -> int:
    rising = lambda part: all(a < b for a, b in zip(part, part[1:]))   # noqa: E731
    return max((j - i for i in range(len(xs)) for j in range(i + 1, len(xs) + 1) if rising(xs[i:j])), default=0)


def _zero_groups(env: dict, xs: list) -> list:
    return [list(group) for nonzero, group in groupby(xs, key=lambda x: x != 0) if nonzero]


PREFIX_BODY = "result = []\nrunning = 0\nfor x in {xs}:\n    running += x\n    result.append(running)\nreturn result"
DIFFS_BODY = "result = []\nfor i in range(1, len({xs})):\n    result.append({xs}[i] - {xs}[i - 1])\nreturn result"
WINDOW_BODY = ("result = []\nfor i in range(len({xs}) - {k} + 1):\n    result.append(sum({xs}[i:i + {k}]))\n"
               "return result")
LONGEST_RUN_BODY = ("best = 0\nrun = 0\nfor i in range(len({xs})):\n    if i > 0 and {xs}[i] == {xs}[i - 1]:\n"
                    "        run += 1\n    else:\n        run = 1\n    best = max(best, run)\nreturn best")
FIRST_REPEAT_BODY = "seen = set()\nfor x in {xs}:\n    if x in seen:\n        return x\n    seen.add(x)\nreturn None"
SECOND_BODY = ("largest = None\nsecond = None\nfor x in {xs}:\n    if largest is None or x > largest:\n"
               "        second = largest\n        largest = x\n"
               "    elif x != largest and (second is None or x > second):\n        second = x\nreturn second")
MODE_BODY = ("counts = {{}}\nfor x in {xs}:\n    counts[x] = counts.get(x, 0) + 1\nbest = None\nfor x in counts:\n"
             "    if best is None or counts[x] > counts[best] or (counts[x] == counts[best] and x < best):\n"
             "        best = x\nreturn best")
DEDUPE_BODY = ("seen = set()\nresult = []\nfor x in {xs}:\n    if x not in seen:\n        seen.add(x)\n"
               "        result.append(x)\nreturn result")
INCREASES_BODY = ("count = 0\nfor i in range(1, len({xs})):\n    if {xs}[i] > {xs}[i - 1]:\n        count += 1\n"
                  "return count")
ARGMAX_BODY = ("best = -1\nfor i in range(len({xs})):\n    if best == -1 or {xs}[i] > {xs}[best]:\n        best = i\n"
               "return best")
UNTIL_NEGATIVE_BODY = "total = 0\nfor x in {xs}:\n    if x < 0:\n        break\n    total += x\nreturn total"
RISING_BODY = LONGEST_RUN_BODY.replace("{xs}[i] == {xs}[i - 1]", "{xs}[i] > {xs}[i - 1]")
PAIRS_BODY = ("count = 0\nfor i, x in enumerate({xs}):\n    for y in {xs}[i + 1:]:\n        if x + y == {k}:\n"
              "            count += 1\nreturn count")
EVENS_FIRST_BODY = ("evens = []\nodds = []\nfor x in {xs}:\n    if x % 2 == 0:\n        evens.append(x)\n    else:\n"
                    "        odds.append(x)\nreturn evens + odds")
INVERSIONS_BODY = PAIRS_BODY.replace("x + y == {k}", "x > y")
ZERO_SPLIT_BODY = ("groups = []\ncurrent = []\nfor x in {xs}:\n    if x == 0:\n        if current:\n"
                   "            groups.append(current)\n        current = []\n    else:\n        current.append(x)\n"
                   "if current:\n    groups.append(current)\nreturn groups")

LIST_STEP_FAMILIES = (
    Family("prefix_sums", "loop", L1, PREFIX_BODY, lambda e, xs: list(accumulate(xs)),
           ("the running totals of {xs}, where element i is the sum of the first i + 1 elements",
            "a list of the prefix sums of {xs}", "the cumulative sums of {xs}, one for each element",
            "a list in which each position holds the total of {xs} up to and including that position"),
           cases=_lists),
    Family("pairwise_differences", "loop", L1, DIFFS_BODY, lambda e, xs: [b - a for a, b in zip(xs, xs[1:])],
           ("the differences between neighbouring elements of {xs}, each element minus the one before it",
            "a list of {xs}[i] - {xs}[i - 1] for every index i from 1 on",
            "the step from each element of {xs} to the next one, as a list",
            "how much each value of {xs} changed compared with its predecessor, in order"), cases=_lists),
    Family("window_sums", "loop", L1, WINDOW_BODY,
           lambda e, xs: [sum(xs[j] for j in range(i, i + e["k"])) for i in range(len(xs) + 1 - e["k"])],
           ("the sums of every run of {k} consecutive elements of {xs}, from left to right",
            "a list of the totals of each window of {k} neighbouring values in {xs}",
            "the moving sums of {xs} over a window of length {k} (empty if {xs} is shorter than {k})",
            "for each place where {k} adjacent items of {xs} begin, what those items add up to"),
           const(k=(2, 4)), _lists),
    Family("longest_run", "loop", L1, LONGEST_RUN_BODY,
           lambda e, xs: max((len(list(group)) for _, group in groupby(xs)), default=0),
           ("the length of the longest stretch of equal neighbouring values in {xs} (0 for an empty list)",
            "the size of the longest block of identical adjacent elements of {xs}, or 0 when it is empty",
            "the largest number of consecutive equal elements in {xs}, with 0 for an empty list",
            "how long the longest streak of one value repeated back to back in {xs} is (0 if there are none)"),
           cases=_lists),
    Family("first_repeated", "loop", L1, FIRST_REPEAT_BODY, _first_repeated,
           ("the first element of {xs} that has already appeared earlier in it, or None if all values differ",
            "the first value of {xs} to occur for the second time when scanning from the left (None if none does)",
            "the earliest repeat in {xs} in reading order, or None if {xs} has no duplicates",
            "the first number of {xs} seen twice when reading from the start, and None if no number repeats"),
           cases=lambda rng, env: _lists(rng, env) + [([3, 1, 1, 3],), ([1, 2, 3],)]),
    Family("second_largest", "loop", L1, SECOND_BODY, _second_largest,
           ("the second largest distinct value in {xs}, or None if it has fewer than two different values",
            "the biggest value of {xs} that is smaller than its maximum, or None when no such value exists",
            "the runner-up among the distinct numbers of {xs} (None if there are fewer than two distinct ones)",
            "the next-to-highest different number in {xs}, and None when there is none"),
           cases=lambda rng, env: _lists(rng, env) + [([4, 4],), ([9, 2, 9, 5],)]),
    Family("mode_smallest", "loop", L1, MODE_BODY, _mode,
           ("the most frequent value in {xs}, the smallest one on a tie, or None for an empty list",
            "the mode of {xs}, breaking ties by choosing the smaller value (None if {xs} is empty)",
            "the value occurring most often in {xs}; if several do, the least of them; None when {xs} is empty",
            "whichever number appears the greatest number of times in {xs}, preferring the lowest on equal "
            "counts, and None for no numbers"),
           cases=lambda rng, env: _lists(rng, env) + [([5, 2, 5, 2, 7],)]),
    Family("dedupe_keep_order", "loop", L1, DEDUPE_BODY, lambda e, xs: list(dict.fromkeys(xs)),
           ("{xs} with repeated values removed, keeping the first occurrence of each in its original order",
            "the distinct elements of {xs} in the order in which they first appear",
            "a copy of {xs} without duplicates, in order of first appearance",
            "every different number of {xs} exactly once, listed where it first shows up"), cases=_lists),
    Family("count_increases", "loop", L1, INCREASES_BODY, lambda e, xs: sum(b > a for a, b in zip(xs, xs[1:])),
           ("how many elements of {xs} are larger than the element just before them",
            "the number of positions where {xs} goes up compared with the previous value",
            "the count of strict increases between neighbouring elements of {xs}",
            "how many times a value in {xs} exceeds its predecessor"), cases=_lists),
    Family("index_of_max", "loop", L1, ARGMAX_BODY, lambda e, xs: xs.index(max(xs)) if xs else -1,
           ("the index of the largest element of {xs} (the first one if it occurs twice), or -1 for an empty list",
            "the position of the maximum of {xs}, the earliest on ties, and -1 when {xs} is empty",
            "where the biggest value of {xs} first occurs, or -1 if {xs} has no elements",
            "the smallest index holding the greatest number in {xs}, and -1 if the list is empty"), cases=_lists),
    Family("sum_until_negative", "loop", L1, UNTIL_NEGATIVE_BODY, lambda e, xs: sum(takewhile(lambda x: x >= 0, xs)),
           ("the sum of the elements of {xs} before the first negative one (all of them if none is negative)",
            "the total of {xs} from the start up to, but not including, its first negative number",
            "the sum of the leading non-negative values of {xs}, stopping at the first negative",
            "what the numbers of {xs} add up to if you stop as soon as you meet a value below zero"),
           cases=lambda rng, env: _lists(rng, env) + [([2, 3, -1, 9],)]),
    Family("longest_rising_run", "loop", L1, RISING_BODY, _longest_rising,
           ("the length of the longest strictly increasing stretch of consecutive elements in {xs} (0 if empty)",
            "the size of the longest run of neighbouring values of {xs} that keep going up, 0 when {xs} is empty",
            "how many elements the longest block of {xs} has in which each value is bigger than the one before "
            "(0 for an empty list)",
            "the longest number of adjacent items of {xs} that rise strictly one after another, and 0 for none"),
           cases=lambda rng, env: _lists(rng, env) + [([1, 2, 2, 3, 4, 5],)]),
    Family("count_pairs_with_sum", "loop", L1, PAIRS_BODY,
           lambda e, xs: sum(a + b == e["k"] for a, b in combinations(xs, 2)),
           ("the number of pairs of positions i < j in {xs} whose elements add up to {k}",
            "how many pairs of entries at different positions of {xs} sum to {k}",
            "the count of index pairs (i, j) with i < j and {xs}[i] + {xs}[j] == {k}",
            "in how many ways two elements at distinct places in {xs} can total {k}"), const(k=(-4, 6)), _pair_lists),
    Family("evens_then_odds", "loop", L1, EVENS_FIRST_BODY, lambda e, xs: sorted(xs, key=lambda x: x % 2),
           ("the even numbers of {xs} followed by the odd ones, each group in its original order",
            "{xs} rearranged so that the even values come first and the odd values after them, keeping their order",
            "a list of the evens of {xs} and then its odds, both in the order they appear",
            "{xs} split into even and odd numbers, the evens placed before the odds without reordering either"),
           cases=lambda rng, env: _lists(rng, env) + [([3, 2, -5, 4],)]),
    Family("count_inversions", "loop", L1, INVERSIONS_BODY,
           lambda e, xs: sum(a > b for a, b in combinations(xs, 2)),
           ("the number of pairs of positions i < j where {xs}[i] is greater than {xs}[j]",
            "how many pairs of elements of {xs} are out of ascending order, a bigger value before a smaller one",
            "the count of inversions in {xs}: pairs where an earlier element exceeds a later one",
            "how many times a number in {xs} is followed somewhere later by a strictly smaller number"),
           cases=_lists),
    Family("split_at_zeros", "loop", L1, ZERO_SPLIT_BODY, _zero_groups,
           ("the runs of non-zero numbers in {xs} that are separated by zeros, as a list of lists without empty runs",
            "{xs} cut at every 0 into lists of the non-zero values between them, leaving out empty pieces",
            "the groups of consecutive non-zero elements of {xs}, each as a list of its own",
            "a list of lists holding each maximal stretch of {xs} that contains no zero"), cases=_zero_split),
)
