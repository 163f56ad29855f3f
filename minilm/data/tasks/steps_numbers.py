"""Multi-step integer families: loops over a range or over the digits, and small recursions.

catalog.py computes most integer answers in one expression; here the answer is accumulated over
1..n, read digit by digit, or defined by a recursion that calls the function itself ({f} in a
body is the function's own name, as in catalog.py's gcd). Every family is defined for zero and
negative arguments too (an empty range, a sign handled first), so its tests can hold them.
Recursions shrink their argument on every call: a mutant that does not stops at RecursionError.
"""
from __future__ import annotations

import random

from .family import Family, ints

A1 = (("a", "int"),)


def _small(rng: random.Random, env: dict) -> list[tuple]:
    """Zero, a negative, one, and positive numbers small enough for a loop up to them."""
    return ints(rng, 1, -20, 40) + [(1,), (rng.randint(10, 30),)]


def _collatz_cases(rng: random.Random, env: dict) -> list[tuple]:
    return [(0,), (-rng.randint(1, 9),), (1,), (2,), (7,), (rng.randint(3, 60),)]


def _digit_cases(rng: random.Random, env: dict) -> list[tuple]:
    return ints(rng, 1, -999, 999) + [(rng.randint(1000, 99999),), (120,)]


def _two_divisors(rng: random.Random) -> dict:
    k, j = rng.sample(range(2, 8), 2)
    return {"k": k, "j": j}


def _collatz(env: dict, a: int) -> int:
    steps = 0
    while a > 1:
        a, steps = (a // 2 if a % 2 == 0 else 3 * a + 1), steps + 1
    return steps


def _in_base(env: dict, a: int) -> str:
    k, digits, rest = env["k"], [], abs(a)
    while True:
        digits.append(str(rest % k))
        rest //= k
        if rest == 0:
            return ("-" if a < 0 else "") + "".join(reversed(digits))


def _fizzbuzz(env: dict, a: int) -> list:
    words = {0: "FizzBuzz", 3: "Fizz", 5: "Buzz", 6: "Fizz", 9: "Fizz", 10: "Buzz", 12: "Fizz"}
    return [words.get(i % 15, str(i)) for i in range(1, a + 1)]


def _alternating(env: dict, a: int) -> int:
    """The closed form: 1 - 2 + ... + a is (a + 1) / 2 for odd a and -a / 2 for even a."""
    if a < 1:
        return 0
    return (a + 1) // 2 if a % 2 == 1 else -(a // 2)


def _reverse_digits(env: dict, a: int) -> int:
    magnitude = int(str(abs(a))[::-1])
    return -magnitude if a < 0 else magnitude


DIGIT_SUM_BODY = "total = 0\nfor ch in str(abs({a})):\n    total += int(ch)\nreturn total"
COLLATZ_BODY = ("if {a} <= 1:\n    return 0\nif {a} % 2 == 0:\n    return 1 + {f}({a} // 2)\n"
                "return 1 + {f}(3 * {a} + 1)")
DIVISORS_BODY = ("count = 0\nfor divisor in range(1, {a} + 1):\n    if {a} % divisor == 0:\n        count += 1\n"
                 "return count")
SMALLEST_FACTOR_BODY = "for divisor in range(2, {a} + 1):\n    if {a} % divisor == 0:\n        return divisor\nreturn 0"
BASE_BODY = ("if {a} < 0:\n    return '-' + {f}(-{a})\nif {a} < {k}:\n    return str({a})\n"
             "return {f}({a} // {k}) + str({a} % {k})")
MULTIPLES_BODY = ("total = 0\nfor candidate in range(1, {a} + 1):\n    if candidate % {k} == 0 or candidate % {j} == 0:\n"
                  "        total += candidate\nreturn total")
FIZZBUZZ_BODY = ("result = []\nfor i in range(1, {a} + 1):\n    if i % 15 == 0:\n        result.append('FizzBuzz')\n"
                 "    elif i % 3 == 0:\n        result.append('Fizz')\n    elif i % 5 == 0:\n"
                 "        result.append('Buzz')\n    else:\n        result.append(str(i))\nreturn result")
ALTERNATING_BODY = ("total = 0\nfor term in range(1, {a} + 1):\n    if term % 2 == 1:\n        total += term\n"
                    "    else:\n        total -= term\nreturn total")
REVERSE_BODY = ("reversed_digits = ''\nfor ch in str(abs({a})):\n    reversed_digits = ch + reversed_digits\n"
                "if {a} < 0:\n    return -int(reversed_digits)\nreturn int(reversed_digits)")

NUMBER_STEP_FAMILIES = (
    Family("digit_sum", "number", A1, DIGIT_SUM_BODY, lambda e, a: sum(int(d) for d in str(a) if d.isdigit()),
           ("the sum of the decimal digits of {a}, ignoring its sign",
            "what the digits of {a} add up to (a minus sign is not a digit)",
            "the total of all digits in the decimal form of the absolute value of {a}",
            "the digit sum of {a}, read without its sign"), cases=_digit_cases),
    Family("collatz_steps", "number", A1, COLLATZ_BODY, _collatz,
           ("the number of Collatz steps that bring {a} down to 1, where a step halves an even number and turns an "
            "odd one into three times it plus 1, or 0 when {a} is 1 or less",
            "how many times {a} must be replaced by half of it (if even) or 3 times it plus 1 (if odd) before it "
            "reaches 1; 0 for {a} of at most 1",
            "the length of the Collatz path from {a} to 1, counting the steps, with 0 for any {a} not above 1",
            "the count of halve-if-even, else triple-and-add-one moves needed for {a} to arrive at 1 (0 if {a} "
            "is already 1 or smaller)"), cases=_collatz_cases),
    Family("count_divisors", "number", A1, DIVISORS_BODY,
           lambda e, a: len([d for d in range(1, a + 1) if a % d == 0]),
           ("how many positive whole numbers divide {a} exactly, or 0 when {a} is not positive",
            "the number of divisors of {a} from 1 up to {a} itself (0 for zero and negative {a})",
            "the count of integers between 1 and {a} that leave no remainder when dividing {a}, 0 if {a} < 1",
            "how many factors the positive number {a} has, and 0 when {a} is zero or negative"), cases=_small),
    Family("smallest_factor", "number", A1, SMALLEST_FACTOR_BODY,
           lambda e, a: min((d for d in range(2, a + 1) if a % d == 0), default=0),
           ("the smallest divisor of {a} that is greater than 1, or 0 if {a} is less than 2",
            "the least number above 1 that divides {a} evenly (0 when {a} < 2)",
            "the first integer from 2 upwards that is a factor of {a}, or 0 for {a} below 2",
            "the lowest factor of {a} bigger than one, and 0 when {a} is at most 1"), cases=_small),
    Family("to_base", "number", A1, BASE_BODY, _in_base,
           ("{a} written in base {k} as a string of digits, with a leading minus sign when {a} is negative",
            "the base-{k} representation of {a} as a string ('-' in front for a negative number)",
            "a string of the digits of {a} in base {k}, most significant first, prefixed by '-' if {a} < 0",
            "the text form of {a} using radix {k}, with a minus sign before it for negative values"),
           lambda rng: {"k": rng.randint(2, 9)}, _digit_cases),
    Family("sum_of_multiples", "number", A1, MULTIPLES_BODY,
           lambda e, a: sum({*range(e["k"], a + 1, e["k"]), *range(e["j"], a + 1, e["j"])}),
           ("the sum of the numbers from 1 to {a} that are divisible by {k} or by {j}",
            "the total of every integer between 1 and {a} inclusive that is a multiple of {k} or of {j}",
            "what the multiples of {k} and of {j} up to {a} add up to, each number counted once",
            "the sum over all whole numbers 1..{a} that {k} or {j} divides"), _two_divisors, _small),
    Family("fizzbuzz", "number", A1, FIZZBUZZ_BODY, _fizzbuzz,
           ("the FizzBuzz list for 1 to {a}: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' "
            "for multiples of both and otherwise the number as a string",
            "a list of strings for the numbers 1 up to {a}, each replaced by 'FizzBuzz' if divisible by 15, "
            "'Fizz' if by 3, 'Buzz' if by 5, else written as digits",
            "the words of the FizzBuzz game from 1 through {a} ('Fizz' on 3s, 'Buzz' on 5s, 'FizzBuzz' on both, "
            "the number itself as text otherwise)",
            "for i = 1..{a}, 'Fizz' when 3 divides i, 'Buzz' when 5 does, 'FizzBuzz' when both do and str(i) "
            "when neither does, as a list"), cases=_small),
    Family("alternating_sum", "number", A1, ALTERNATING_BODY, _alternating,
           ("1 - 2 + 3 - 4 + ... continued up to {a}, adding odd numbers and subtracting even ones (0 if {a} < 1)",
            "the alternating sum of the whole numbers from 1 to {a}, starting with plus 1, or 0 when {a} is below 1",
            "the result of adding the odd numbers and subtracting the even numbers among 1..{a}",
            "the sum of 1 to {a} with the signs alternating +, -, +, ..., and 0 when {a} is zero or negative"),
           cases=_small),
    Family("reverse_digits", "number", A1, REVERSE_BODY, _reverse_digits,
           ("the integer whose digits are those of {a} in reverse order, keeping the sign of {a}",
            "{a} with its decimal digits reversed (leading zeros dropped), negative if {a} is negative",
            "the number read from right to left from the digits of {a}, with the same sign as {a}",
            "{a} turned around digit by digit, its minus sign kept in front"), cases=_digit_cases),
)
