"""Compositions: filter, then map, then reduce, over a list of integers.

"The sum of the numbers in xs that are odd, each squared" is three parts: a predicate (odd), an
expression (square) and a reducer (sum). Every pipeline solution has the same shape,

    return sum([x * x for x in xs if x % 2 == 1])

so a model that has learned each part, and the shape, can assemble a pair it has never seen.
That is what `test_compose` measures: some (predicate, expression) pairs are held out of training
(`held_out_pairs`), while every predicate and every expression still appears in training, alone and
in other pairs.
"""
from __future__ import annotations

import random
from itertools import product

from .family import Family, Raw

# id -> (code, phrase, oracle, constant range). The phrase reads after "that are" / "that is".
PREDICATES = {
    "odd": ("x % 2 == 1", "odd", lambda x, k: x % 2 == 1, None),
    "even": ("x % 2 == 0", "even", lambda x, k: x % 2 == 0, None),
    "positive": ("x > 0", "positive", lambda x, k: x > 0, None),
    "negative": ("x < 0", "negative", lambda x, k: x < 0, None),
    "greater": ("x > {k}", "greater than {k}", lambda x, k: x > k, (-3, 5)),
    "less": ("x < {k}", "less than {k}", lambda x, k: x < k, (-3, 5)),
    "divisible": ("x % {k} == 0", "divisible by {k}", lambda x, k: x % k == 0, (3, 5)),
}
# id -> (code, participle, oracle, constant range). The participle reads after "each".
EXPRESSIONS = {
    "square": ("x * x", "squared", lambda x, j: x * x, None),
    "double": ("2 * x", "doubled", lambda x, j: 2 * x, None),
    "negate": ("-x", "negated", lambda x, j: -x, None),
    "absolute": ("abs(x)", "replaced by its absolute value", lambda x, j: abs(x), None),
    "times": ("x * {j}", "multiplied by {j}", lambda x, j: x * j, (3, 9)),
    "plus": ("x + {j}", "increased by {j}", lambda x, j: x + j, (1, 9)),
    "minus": ("x - {j}", "decreased by {j}", lambda x, j: x - j, (1, 9)),
}
REDUCERS = {"list": ("[{e} for x in {xs}{cond}]", lambda ys: ys),
            "sum": ("sum([{e} for x in {xs}{cond}])", sum),
            "count": ("len([{e} for x in {xs}{cond}])", len)}

ALL_PAIRS = tuple(product(PREDICATES, EXPRESSIONS))


def held_out_pairs(seed: int, fraction: float = 0.25) -> frozenset[tuple[str, str]]:
    """The (predicate, expression) pairs reserved for test_compose, drawn from `seed`, such that every
    predicate and every expression keeps at least two training pairs."""
    rng = random.Random(f"{seed}:compose")
    n_held = round(fraction * len(ALL_PAIRS))
    while True:
        pairs = rng.sample(ALL_PAIRS, len(ALL_PAIRS))
        held, kept = pairs[:n_held], pairs[n_held:]
        if all(sum(p == pred for p, _ in kept) >= 2 for pred in PREDICATES) and \
                all(sum(e == expr for _, e in kept) >= 2 for expr in EXPRESSIONS):
            return frozenset(held)


def _parts_sampler(use_pred: bool, use_expr: bool, reducer: str):
    def draw(rng: random.Random) -> dict:
        pred = rng.choice(list(PREDICATES)) if use_pred else None
        expr = rng.choice(list(EXPRESSIONS)) if use_expr else None
        env: dict = {"_parts": (pred, expr, reducer)}
        if pred:
            code, phrase, fn, bounds = PREDICATES[pred]
            k = rng.randint(*bounds) if bounds else None
            env.update(_pred=lambda x, fn=fn, k=k: fn(x, k), cond=Raw(" if " + code.format(k=k)),
                       P=Raw(phrase.format(k=k)))
            if bounds:
                env["k"] = k
        else:
            env.update(_pred=lambda x: True, cond=Raw(""))
        if expr:
            code, verb, fn, bounds = EXPRESSIONS[expr]
            j = rng.randint(*bounds) if bounds else None
            env.update(_expr=lambda x, fn=fn, j=j: fn(x, j), e=Raw(code.format(j=j)), V=Raw(verb.format(j=j)))
            if bounds:
                env["j"] = j
        else:
            env.update(_expr=lambda x: x, e=Raw("x"))
        return env
    return draw


def _pipeline_oracle(reducer: str):
    def oracle(env: dict, xs: list):
        return REDUCERS[reducer][1]([env["_expr"](x) for x in xs if env["_pred"](x)])
    return oracle


def _family(name: str, use_pred: bool, use_expr: bool, reducer: str, whats: tuple[str, ...]) -> Family:
    body = "return " + REDUCERS[reducer][0]
    return Family(name, "compose", (("xs", "list"),), body, _pipeline_oracle(reducer), whats,
                  _parts_sampler(use_pred, use_expr, reducer))


# The families whose tasks combine a predicate with an expression: the ones test_compose draws from.
PAIR_FAMILIES = ("filter_map", "filter_map_sum")

COMPOSE_FAMILIES = (
    _family("filter", True, False, "list",
            ("the numbers in {xs} that are {P}", "a list of the elements of {xs} that are {P}",
             "the values in {xs} that are {P}, in their original order")),
    _family("map", False, True, "list",
            ("the numbers in {xs}, each {V}", "a list of the elements of {xs}, after each one is {V}",
             "the values in {xs}, every one of them {V}, as a list")),
    _family("filter_sum", True, False, "sum",
            ("the sum of the numbers in {xs} that are {P}", "the total of the elements of {xs} that are {P}",
             "the sum over every value in {xs} that is {P}")),
    _family("filter_count", True, False, "count",
            ("how many numbers in {xs} are {P}", "the count of elements of {xs} that are {P}",
             "the number of values in {xs} that are {P}")),
    _family("map_sum", False, True, "sum",
            ("the sum of the numbers in {xs}, each {V}", "the total of the elements of {xs} after each one is {V}",
             "the sum over every value in {xs} of that value {V}")),
    _family("filter_map", True, True, "list",
            ("the numbers in {xs} that are {P}, each {V}",
             "a list of the elements of {xs} that are {P}, after each one is {V}",
             "the values in {xs} that are {P}, every one of them {V}, as a list")),
    _family("filter_map_sum", True, True, "sum",
            ("the sum of the numbers in {xs} that are {P}, each {V}",
             "the total of the elements of {xs} that are {P}, after each one is {V}",
             "the sum over every value in {xs} that is {P} of that value {V}")),
)


def composition(record_or_env) -> tuple[str, str] | None:
    """The (predicate, expression) pair of a two-part composition, or None for anything else."""
    parts = record_or_env.get("parts") or record_or_env.get("_parts")
    if parts and parts[0] and parts[1]:
        return (parts[0], parts[1])
    return None
