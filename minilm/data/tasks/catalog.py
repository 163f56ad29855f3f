"""The scalar and string families: arithmetic, comparisons and string handling.

Each entry is one canonical solution (the style a small model should learn: one line where a
line will do), an oracle that computes expected results without reading that solution, and three
what phrases (the third is held out of training). Bodies are written the way `ast.unparse` prints
them, so a repair mutation changes only the bug, never the formatting.
"""
from __future__ import annotations

import math
import random

from .family import Family, string, strings

A1 = (("a", "int"),)
A2 = (("a", "int"), ("b", "int"))
A3 = (("a", "int"), ("b", "int"), ("c", "int"))
S1 = (("s", "str"),)


def const(**ranges):
    """A constant sampler: const(k=(2, 9)) draws k uniformly from 2..9 inclusive."""
    return lambda rng: {name: rng.randint(lo, hi) for name, (lo, hi) in ranges.items()}


def _range_bounds(rng: random.Random) -> dict:
    return {"lo": rng.randint(-10, 0), "hi": rng.randint(1, 10)}


def _nonneg_pairs(rng: random.Random, env: dict) -> list[tuple]:
    return [(0, rng.randint(1, 30)), (rng.randint(1, 30), 0), (0, 0)] + [
        (rng.randint(1, 60), rng.randint(1, 60)) for _ in range(3)]


def _small_nonneg(rng: random.Random, env: dict) -> list[tuple]:
    return [(0,), (1,), (rng.randint(2, 4),), (rng.randint(5, 9),)]


def _letter(rng, exclude=()):
    return rng.choice([c for c in "abcdexyz" if c not in exclude])


def _two_letters(rng: random.Random) -> dict:
    old = _letter(rng)
    return {"old": old, "new": _letter(rng, old)}


def _palindromes(rng: random.Random, env: dict) -> list[tuple]:
    half = string(rng, rng.randint(1, 3), "abcx")
    return [("",), ("a",), (half + half[::-1],), (half + "z" + half[::-1],), ("ab" + half,), ("xyz",)]


def _affix_cases(prefix: bool):
    def cases(rng: random.Random, env: dict) -> list[tuple]:
        p = env["p"]
        body = string(rng, rng.randint(1, 4), "abcxyz")
        return [("",), (p,), ((p + body) if prefix else (body + p),), ((body + p) if prefix else (p + body),),
                ("zz" + body + "zz",)]
    return cases


def _affix(rng: random.Random) -> dict:
    return {"p": string(rng, rng.randint(1, 2), "abcxyz")}


def _sentences(rng: random.Random, env: dict) -> list[tuple]:
    word = lambda: string(rng, rng.randint(1, 5), "abcdefgh")
    return [("",), ("   ",), (word(),), (f"{word()} {word()}",),
            (f"  {word()}  {word()} {word()} ",)]


def _lower(rng: random.Random, env: dict) -> list[tuple]:
    return [(s,) for s in strings(rng, "abcdefghiouxyz")]


def _sign(a):
    return (a > 0) - (a < 0)


SIGN_BODY = "if {a} > 0:\n    return 1\nif {a} < 0:\n    return -1\nreturn 0"
FACTORIAL_BODY = "result = 1\nfor i in range(2, {a} + 1):\n    result *= i\nreturn result"

SCALAR_FAMILIES = (
    # -- arithmetic --
    Family("add", "arithmetic", A2, "return {a} + {b}", lambda e, a, b: a + b,
           ("the sum of {a} and {b}", "{a} added to {b}", "{a} plus {b}")),
    Family("subtract", "arithmetic", A2, "return {a} - {b}", lambda e, a, b: a - b,
           ("the difference {a} minus {b}", "{b} subtracted from {a}", "what is left when {b} is taken away from {a}")),
    Family("multiply", "arithmetic", A2, "return {a} * {b}", lambda e, a, b: a * b,
           ("the product of {a} and {b}", "{a} multiplied by {b}", "{a} times {b}")),
    Family("power", "arithmetic", A1, "return {a} ** {k}", lambda e, a: a ** e["k"],
           ("{a} raised to the power {k}", "{a} to the power of {k}", "{a} raised to the exponent {k}"),
           const(k=(2, 5))),
    Family("add_const", "arithmetic", A1, "return {a} + {k}", lambda e, a: a + e["k"],
           ("{a} plus {k}", "{a} increased by {k}", "the number that is {k} more than {a}"), const(k=(1, 20))),
    Family("sub_const", "arithmetic", A1, "return {a} - {k}", lambda e, a: a - e["k"],
           ("{a} minus {k}", "{a} decreased by {k}", "the number that is {k} less than {a}"), const(k=(1, 20))),
    Family("mul_const", "arithmetic", A1, "return {a} * {k}", lambda e, a: a * e["k"],
           ("{a} times {k}", "{a} multiplied by {k}", "{k} times the value of {a}"), const(k=(2, 12))),
    Family("average", "arithmetic", A2, "return ({a} + {b}) / 2", lambda e, a, b: (a + b) / 2,
           ("the average of {a} and {b}", "the mean of {a} and {b}", "the midpoint between {a} and {b}")),
    Family("absolute", "arithmetic", A1, "return {a} if {a} >= 0 else -{a}", lambda e, a: abs(a),
           ("the absolute value of {a}", "{a} without its sign", "the distance of {a} from zero")),
    Family("clamp", "arithmetic", A1, "return max({lo}, min({hi}, {a}))", lambda e, a: max(e["lo"], min(e["hi"], a)),
           ("{a} clamped to the range {lo} to {hi}", "{a} limited to lie between {lo} and {hi}",
            "{a} pushed into the interval from {lo} to {hi}"), _range_bounds),
    Family("is_even", "arithmetic", A1, "return {a} % 2 == 0", lambda e, a: a % 2 == 0,
           ("True if {a} is even and False otherwise", "whether {a} is an even number",
            "whether {a} leaves no remainder when divided by 2")),
    Family("is_odd", "arithmetic", A1, "return {a} % 2 == 1", lambda e, a: a % 2 == 1,
           ("True if {a} is odd and False otherwise", "whether {a} is an odd number",
            "whether {a} leaves remainder 1 when divided by 2")),
    Family("divisible", "arithmetic", A1, "return {a} % {k} == 0", lambda e, a: a % e["k"] == 0,
           ("True if {a} is divisible by {k} and False otherwise", "whether {a} is a multiple of {k}",
            "whether {k} divides {a} evenly"), const(k=(3, 9))),
    Family("factorial", "arithmetic", A1, FACTORIAL_BODY, lambda e, a: math.factorial(a),
           ("the factorial of the non-negative integer {a}", "{a} factorial, the product 1 * 2 * ... * {a}",
            "the product of all whole numbers from 1 up to {a}"), cases=_small_nonneg),
    Family("gcd", "arithmetic", A2, "return {a} if {b} == 0 else {f}({b}, {a} % {b})",
           lambda e, a, b: math.gcd(a, b),
           ("the greatest common divisor of the non-negative integers {a} and {b}",
            "the gcd of the non-negative integers {a} and {b}",
            "the largest number dividing both {a} and {b} (both non-negative)"), cases=_nonneg_pairs),
    # -- comparisons --
    Family("max2", "comparison", A2, "return {a} if {a} > {b} else {b}", lambda e, a, b: max(a, b),
           ("the larger of {a} and {b}", "the maximum of {a} and {b}", "whichever of {a} and {b} is bigger")),
    Family("min2", "comparison", A2, "return {a} if {a} < {b} else {b}", lambda e, a, b: min(a, b),
           ("the smaller of {a} and {b}", "the minimum of {a} and {b}", "whichever of {a} and {b} is smaller")),
    Family("max3", "comparison", A3, "return max({a}, {b}, {c})", lambda e, a, b, c: max(a, b, c),
           ("the largest of {a}, {b} and {c}", "the maximum of {a}, {b} and {c}",
            "the biggest value among {a}, {b} and {c}")),
    Family("min3", "comparison", A3, "return min({a}, {b}, {c})", lambda e, a, b, c: min(a, b, c),
           ("the smallest of {a}, {b} and {c}", "the minimum of {a}, {b} and {c}",
            "the least value among {a}, {b} and {c}")),
    Family("sign", "comparison", A1, SIGN_BODY, lambda e, a: _sign(a),
           ("the sign of {a}: 1 if it is positive, -1 if negative and 0 if zero",
            "1, -1 or 0 depending on whether {a} is positive, negative or zero",
            "-1 for a negative {a}, 1 for a positive {a} and 0 when {a} is zero")),
    Family("between", "comparison", A1, "return {lo} <= {a} <= {hi}", lambda e, a: e["lo"] <= a <= e["hi"],
           ("True if {a} is between {lo} and {hi} inclusive and False otherwise",
            "whether {a} is at least {lo} and at most {hi}",
            "whether {a} lies in the closed range from {lo} to {hi}"), _range_bounds),
    Family("is_positive", "comparison", A1, "return {a} > 0", lambda e, a: a > 0,
           ("True if {a} is greater than zero and False otherwise", "whether {a} is positive",
            "whether {a} is strictly above 0")),
    # -- strings --
    Family("reverse_string", "string", S1, "return {s}[::-1]", lambda e, s: s[::-1],
           ("the string {s} reversed", "{s} written backwards", "the characters of {s} in reverse order")),
    Family("upper", "string", S1, "return {s}.upper()", lambda e, s: s.upper(),
           ("{s} converted to upper case", "{s} in capital letters", "the uppercase version of {s}")),
    Family("lower", "string", S1, "return {s}.lower()", lambda e, s: s.lower(),
           ("{s} converted to lower case", "{s} in small letters", "the lowercase version of {s}")),
    Family("count_vowels", "string", S1, "return len([ch for ch in {s} if ch in 'aeiou'])",
           lambda e, s: sum(s.count(v) for v in "aeiou"),
           ("the number of lowercase vowels (a, e, i, o, u) in {s}", "how many of the letters a, e, i, o, u {s} contains",
            "the count of characters of {s} that are one of a, e, i, o, u"), cases=_lower),
    Family("count_char", "string", S1, "return {s}.count({ch})", lambda e, s: s.count(e["ch"]),
           ("the number of times {ch} occurs in {s}", "how many times the character {ch} appears in {s}",
            "the count of {ch} characters in {s}"), lambda rng: {"ch": _letter(rng)}),
    Family("palindrome", "string", S1, "return {s} == {s}[::-1]", lambda e, s: s == s[::-1],
           ("True if {s} is a palindrome and False otherwise", "whether {s} reads the same forwards and backwards",
            "whether {s} equals its own reverse"), cases=_palindromes),
    Family("startswith", "string", S1, "return {s}.startswith({p})", lambda e, s: s.startswith(e["p"]),
           ("True if {s} starts with {p} and False otherwise", "whether {s} begins with the prefix {p}",
            "whether the string {s} has {p} at its start"), _affix, _affix_cases(prefix=True)),
    Family("endswith", "string", S1, "return {s}.endswith({p})", lambda e, s: s.endswith(e["p"]),
           ("True if {s} ends with {p} and False otherwise", "whether {s} finishes with the suffix {p}",
            "whether the string {s} has {p} at its end"), _affix, _affix_cases(prefix=False)),
    Family("repeat", "string", S1, "return {s} * {k}", lambda e, s: s * e["k"],
           ("{s} repeated {k} times", "the string {s} concatenated with itself {k} times",
            "{k} copies of {s} joined together"), const(k=(2, 5))),
    Family("replace", "string", S1, "return {s}.replace({old}, {new})", lambda e, s: s.replace(e["old"], e["new"]),
           ("{s} with every {old} replaced by {new}", "a copy of {s} where each {old} becomes {new}",
            "{s} after substituting {new} for each {old}"), _two_letters, _lower),
    Family("word_count", "string", S1, "return len({s}.split())", lambda e, s: len(s.split()),
           ("the number of words in {s}", "how many whitespace-separated words {s} contains",
            "the count of words in the sentence {s}"), cases=_sentences),
    Family("str_length", "string", S1, "return len({s})", lambda e, s: len(s),
           ("the length of {s}", "the number of characters in {s}", "how many characters the string {s} has")),
    Family("concat", "string", (("s", "str"), ("t", "str")), "return {s} + {t}", lambda e, s, t: s + t,
           ("{s} followed by {t}", "the concatenation of {s} and {t}", "{t} appended to the end of {s}")),
    Family("join", "string", (("ws", "strlist"),), "return {sep}.join({ws})", lambda e, ws: e["sep"].join(ws),
           ("the strings in {ws} joined with {sep}", "the items of {ws} concatenated with the separator {sep}",
            "one string made of the items of {ws} with {sep} between them"),
           lambda rng: {"sep": rng.choice([", ", "-", " ", "+", "", "/", ":"])}),
)
