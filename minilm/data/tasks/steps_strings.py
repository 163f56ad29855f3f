"""Multi-step string families: strings read or built character by character.

catalog.py's string families are one method call each (`s.upper()`, `s[::-1]`). Here the answer
needs a state that a single call does not keep: the previous character, a stack of open brackets,
counts from a first pass read back in a second, a string grown one character at a time. Test
strings mix letters, digits, spaces and punctuation, and include the empty string.
"""
from __future__ import annotations

import random
import string as ascii_sets
from itertools import groupby, zip_longest

from .catalog import const
from .family import Family, string, strings

S1 = (("s", "str"),)
S2 = (("s", "str"), ("t", "str"))


def _runs(rng: random.Random, env: dict) -> list[tuple]:
    return [("",), ("a",), ("aaab",), ("abba",)] + [(string(rng, rng.randint(4, 9), "aab"),) for _ in range(2)]


def _mixed(rng: random.Random, env: dict) -> list[tuple]:
    return [(s,) for s in strings(rng, "abxyz AZ!9")] + [("zebra at xyz",)]


def _sentences(rng: random.Random, env: dict) -> list[tuple]:
    word = lambda: string(rng, rng.randint(1, 5), "abcde")   # noqa: E731
    return [("",), ("a",), (" x  yz ",), (f"{word()} {word()}",), (f"{word()}  {word()} {word()}",)]


def _phrases(rng: random.Random, env: dict) -> list[tuple]:
    letters = string(rng, rng.randint(1, 3), "abc")
    return [("",), ("a",), ("Ab, a!",), ("ab",), (letters + " " + letters[::-1].upper() + ".",),
            (string(rng, 6, "aB ,c"),)]


def _brackets(rng: random.Random, env: dict) -> list[tuple]:
    return [("",), ("(",), ("()",), ("([)]",), ("[(x)]y",), ("(]",), ("))((",), (string(rng, 6, "()[]"),)]


def _with_digits(rng: random.Random, env: dict) -> list[tuple]:
    return [(s,) for s in strings(rng, "ab19 0x5")]


def _string_pairs(rng: random.Random, env: dict) -> list[tuple]:
    return [("", ""), ("", "ab"), ("a", "b"), ("abc", "abd"), ("xy", "x")] + [
        (string(rng, n, "abc"), string(rng, n + rng.randint(0, 2), "abc")) for n in (3, 5)]


def _letter_digit_pairs(rng: random.Random, env: dict) -> list[tuple]:
    pair = lambda: rng.choice("abcxyz") + str(rng.randint(0, 4))   # noqa: E731
    return [("",), ("a1",), ("b0c3",)] + [("".join(pair() for _ in range(rng.randint(2, 4))),) for _ in range(2)]


def _caesar(env: dict, s: str) -> str:
    lower = ascii_sets.ascii_lowercase
    return s.translate(str.maketrans(lower, lower[env["k"]:] + lower[:env["k"]]))


def _letters_palindrome(env: dict, s: str) -> bool:
    letters = "".join(filter(str.isalpha, s)).casefold()
    return letters == letters[::-1]


def _balanced(env: dict, s: str) -> bool:
    kept = "".join(ch for ch in s if ch in "()[]")
    for _ in range(len(kept)):   # each round deletes every innermost pair
        kept = kept.replace("()", "").replace("[]", "")
    return kept == ""


def _first_unique(env: dict, s: str) -> int:
    once = [i for i, ch in enumerate(s) if s.count(ch) == 1]
    return once[0] if once else -1


CHAR_RUNS_BODY = ("result = []\nfor ch in {s}:\n    if result and result[-1][0] == ch:\n        result[-1][1] += 1\n"
                  "    else:\n        result.append([ch, 1])\nreturn result")
CAESAR_BODY = ("result = ''\nfor ch in {s}:\n    if 'a' <= ch <= 'z':\n"
               "        result += chr((ord(ch) - ord('a') + {k}) % 26 + ord('a'))\n    else:\n        result += ch\n"
               "return result")
CAPITALISE_BODY = ("result = ''\nprevious = ' '\nfor ch in {s}:\n    if previous == ' ':\n        result += ch.upper()\n"
                   "    else:\n        result += ch\n    previous = ch\nreturn result")
PALINDROME_BODY = ("letters = [ch.lower() for ch in {s} if ch.isalpha()]\nfor i in range(len(letters) // 2):\n"
                   "    if letters[i] != letters[len(letters) - 1 - i]:\n        return False\nreturn True")
FIRST_UNIQUE_BODY = ("counts = {{}}\nfor ch in {s}:\n    counts[ch] = counts.get(ch, 0) + 1\nfor i in range(len({s})):\n"
                     "    if counts[{s}[i]] == 1:\n        return i\nreturn -1")
SQUEEZE_BODY = "result = ''\nfor ch in {s}:\n    if not result or result[-1] != ch:\n        result += ch\nreturn result"
BRACKETS_BODY = ("pairs = {{')': '(', ']': '['}}\nstack = []\nfor ch in {s}:\n    if ch in '([':\n        stack.append(ch)\n"
                 "    elif ch in pairs:\n        if not stack or stack.pop() != pairs[ch]:\n            return False\n"
                 "return not stack")
DIGIT_SUM_BODY = "total = 0\nfor ch in {s}:\n    if ch.isdigit():\n        total += int(ch)\nreturn total"
HAMMING_BODY = ("count = abs(len({s}) - len({t}))\nfor i in range(min(len({s}), len({t}))):\n    if {s}[i] != {t}[i]:\n"
                "        count += 1\nreturn count")
CLASSES_BODY = ("letters = 0\ndigits = 0\nothers = 0\nfor ch in {s}:\n    if ch.isalpha():\n        letters += 1\n"
                "    elif ch.isdigit():\n        digits += 1\n    else:\n        others += 1\n"
                "return (letters, digits, others)")
EXPAND_BODY = "result = ''\nfor i in range(0, len({s}), 2):\n    result += {s}[i] * int({s}[i + 1])\nreturn result"

STRING_STEP_FAMILIES = (
    Family("char_runs", "text", S1, CHAR_RUNS_BODY, lambda e, s: [[ch, len(list(run))] for ch, run in groupby(s)],
           ("the run-length encoding of {s} as a list of [character, count] pairs, one per run of equal characters",
            "a list of [character, length] pairs, in order, for the runs of repeated characters in {s}",
            "the runs of identical neighbouring characters of {s}, each given as a two-item list of the character "
            "and how many times it repeats",
            "{s} compressed into [letter, how many times in a row] pairs, from left to right"), cases=_runs),
    Family("caesar_shift", "text", S1, CAESAR_BODY, _caesar,
           ("{s} with every lowercase letter moved {k} places forward in the alphabet, wrapping from z back to a, "
            "and every other character unchanged",
            "the Caesar cipher of {s} with a shift of {k}, applied to the lowercase letters a to z only",
            "{s} encoded by replacing each small letter with the letter {k} positions later (after z comes a "
            "again), other characters kept",
            "a copy of {s} in which each of the letters a to z is advanced by {k} steps around the alphabet"),
           const(k=(1, 25)), _mixed),
    Family("capitalise_words", "text", S1, CAPITALISE_BODY,
           lambda e, s: " ".join(part[:1].upper() + part[1:] for part in s.split(" ")),
           ("{s} with the first character of every word made upper case, words being separated by spaces and "
            "the spacing kept exactly",
            "a copy of {s} in which each character that starts a word (at the beginning or after a space) is "
            "capitalised",
            "{s} with each space-separated word starting with a capital letter, all other characters untouched",
            "the string {s} where the very first character and every character following a space become uppercase"),
           cases=_sentences),
    Family("letters_palindrome", "text", S1, PALINDROME_BODY, _letters_palindrome,
           ("True if the letters of {s} read the same forwards and backwards when case is ignored and everything "
            "that is not a letter is dropped, else False",
            "whether {s} is a palindrome once only its letters count, upper and lower case treated alike",
            "whether the letters of {s}, compared without regard to case and skipping spaces and punctuation, "
            "form a palindrome",
            "whether keeping just the alphabetic characters of {s}, all in lower case, gives a string equal to its "
            "own reverse"), cases=_phrases),
    Family("first_unique_char", "text", S1, FIRST_UNIQUE_BODY, _first_unique,
           ("the index of the first character of {s} that occurs exactly once in it, or -1 if every character "
            "repeats",
            "the position of the leftmost character that appears only once in {s} (-1 when there is none)",
            "where the first non-repeated character of {s} is, or -1 if no character is unique",
            "the smallest index i such that {s}[i] appears a single time in {s}, and -1 otherwise"), cases=_runs),
    Family("squeeze_repeats", "text", S1, SQUEEZE_BODY, lambda e, s: "".join(ch for ch, _ in groupby(s)),
           ("{s} with every run of the same character shortened to a single character",
            "a copy of {s} in which consecutive duplicate characters are collapsed into one",
            "{s} without adjacent repeated characters, each run kept once",
            "the string {s} leaving out any character equal to the one just before it"), cases=_runs),
    Family("balanced_brackets", "text", S1, BRACKETS_BODY, _balanced,
           ("True if the round and square brackets in {s} are balanced and properly nested (other characters "
            "ignored), False otherwise",
            "whether every ( and [ in {s} is closed by a matching ) or ] in the right order, with no closing "
            "bracket left over",
            "whether the brackets () and [] of {s} match up correctly, ignoring all other characters",
            "whether {s} has well-formed bracket nesting, each opening bracket closed later by one of its own kind"),
           cases=_brackets),
    Family("digit_char_sum", "text", S1, DIGIT_SUM_BODY, lambda e, s: sum(map(int, filter(str.isdigit, s))),
           ("the sum of the digits that appear in {s}, each digit character counted as its value",
            "the total of the numeric characters of {s}, read as single digits (0 if it has none)",
            "what the digits 0 to 9 found in {s} add up to, other characters ignored",
            "the sum of the values of all digit characters in the string {s}"), cases=_with_digits),
    Family("hamming_distance", "text", S2, HAMMING_BODY, lambda e, s, t: sum(a != b for a, b in zip_longest(s, t)),
           ("the number of positions at which {s} and {t} differ, each character beyond the end of the shorter "
            "string counting as a difference",
            "how many indices hold different characters in {s} and {t}, plus the difference of their lengths",
            "the count of mismatched characters between {s} and {t} compared position by position, where extra "
            "characters of the longer string all count",
            "in how many places {s} and {t} disagree when lined up from the start, any unmatched tail included"),
           cases=_string_pairs),
    Family("char_classes", "text", S1, CLASSES_BODY,
           lambda e, s: (sum(map(str.isalpha, s)), sum(map(str.isdigit, s)),
                         len(s) - sum(ch.isalpha() or ch.isdigit() for ch in s)),
           ("a tuple (letters, digits, others) counting the letters, the digits and all other characters of {s}",
            "the numbers of alphabetic, numeric and remaining characters in {s}, as a tuple of three integers",
            "how many letters, how many digits and how many other characters {s} contains, in that order, as a "
            "tuple",
            "a triple giving the count of letters in {s}, then of digits, then of everything else"),
           cases=_with_digits),
    Family("expand_pairs", "text", S1, EXPAND_BODY,
           lambda e, s: "".join(letter * int(times) for letter, times in zip(s[::2], s[1::2])),
           ("the string you get from {s}, a sequence of letter-digit pairs, by repeating each letter as many times "
            "as the digit after it",
            "{s} decoded: {s} alternates a character and a single digit, and each character is written out that "
            "many times",
            "the expansion of {s}, where every character at an even index is repeated by the digit that follows it",
            "a string made by reading {s} two characters at a time and writing the first one as often as the "
            "second says"), cases=_letter_digit_pairs),
)
