"""The function miner (minilm/data/mining.py, mined.py): each filter drops what it names, a kept
function's code is a standalone program that does what it did in its module, doctests become
asserts that tell a right answer from a wrong one, and no function mined from the stdlib shares
10 words in a row with what we evaluate."""
import ast
import textwrap
from dataclasses import fields

import pytest
from hypothesis import given, strategies as st

from minilm.data.mined import (WINDOW, drop_contaminated, evaluated_documents, mine_source, module_name,
                               source_fingerprint)
from minilm.data.mining import (BUILTINS, MAX_LINES, MiningCounts, doctest_asserts, format_counts, free_names,
                                mine_module)
from minilm.data.tasks.jsonl import validate_record
from minilm.evaluation.contamination import shared_ngrams
from minilm.evaluation.execution import run_program

FILTERS = ("public", "documented", "short", "plain", "self_contained")  # mining.py's, in order


def mine(source: str) -> tuple[list[dict], MiningCounts]:
    counts = MiningCounts()
    return mine_module(textwrap.dedent(source), "planted", counts), counts


def dropped_by(source: str) -> str:
    """The first filter that the module's one public function did not pass, or "kept"."""
    records, counts = mine(source)
    assert counts.functions >= 1 and counts.public <= 1
    return next((name for name in FILTERS if getattr(counts, name) == 0), "kept" if records else "?")


BODY = '    """Return x plus one, as a number."""\n    return x + 1\n'
LONG = 'def f(x):\n    """Add one to x, one line at a time."""\n' + "    x = x + 0\n" * MAX_LINES + "    return x + 1\n"
BIG_HELPER = "def _big(x):\n" + "    x = x + 0\n" * MAX_LINES + "    return x\n"


@pytest.mark.parametrize("source, stage", [
    ("def _f(x):\n" + BODY, "public"),
    ("def f(x):\n    return x + 1\n", "documented"),
    ('def f(x):\n    """Deprecated."""\n    return x\n', "documented"),
    (LONG, "short"),
    ("async def f(x):\n" + BODY, "plain"),
    ("def f(self, x):\n" + BODY, "plain"),
    ("N = 0\ndef f(x):\n" + BODY.replace("return", "global N\n    N += 1\n    return"), "plain"),
    ("@registry[0]\ndef f(x):\n" + BODY, "plain"),
    ("def f(x):\n" + BODY.replace("x + 1", "x + missing"), "self_contained"),
    ("if True:\n    LIMIT = 3\ndef f(x):\n" + BODY.replace("x + 1", "x + LIMIT"), "self_contained"),
    ("from . import util\ndef f(x):\n" + BODY.replace("x + 1", "util.g(x)"), "self_contained"),
    ("STEP = 1\nSTEP = 2\ndef f(x):\n" + BODY.replace("x + 1", "x + STEP"), "self_contained"),
    (BIG_HELPER + "def f(x):\n" + BODY.replace("x + 1", "_big(x)"), "self_contained"),
    ("from m import *\n_old = _g\ndef _g(x):\n    return x\ndef f(x):\n" + BODY.replace("x + 1", "_old(x)"),
     "self_contained"),  # _old is m's _g, bound before the def of _g
    ("import math\ndef f(x):\n" + BODY.replace("x + 1", "math.floor(x) + 1"), "kept"),
], ids=["private", "no docstring", "one-word docstring", "too long", "async", "self", "global", "subscript decorator",
        "undefined name", "name bound in an if", "relative import", "bound twice", "big helper",
        "bound after its use at import", "import"])
def test_each_filter_drops_what_it_names(source, stage):
    assert dropped_by(source) == stage


def test_a_kept_function_carries_its_imports_and_helpers_in_file_order():
    records, counts = mine('''
        import os, re
        from collections import Counter as Tally

        WORD = re.compile(r"[a-z]+")
        UNUSED = 1

        def _words(text):
            return WORD.findall(text.lower())

        def top_word(text, sep=os.sep):
            """Return the most common word of text.

            >>> top_word("a b a")
            'a'
            """
            return Tally(_words(text)).most_common(1)[0][0]
        ''')
    assert [r["entry_point"] for r in records] == ["top_word"] and counts.self_contained == 1
    record = records[0]
    assert record["code"].startswith("import os\nimport re\nfrom collections import Counter as Tally\n\nWORD = ")
    assert "UNUSED" not in record["code"] and '"""' not in record["code"]  # the docstring is the request
    assert record["code"].index("def _words") < record["code"].index("def top_word")
    assert record["text"] == "Write a function `top_word(text, sep=os.sep)`: Return the most common word of text."
    assert record["test_list"] == ["assert top_word('a b a') == 'a'"]
    assert run_program(record["code"], record["test_list"]).passed


# A module from pieces: each name the function may use, with the statements that bind it at
# module level (None: nothing a standalone program could carry binds it).
PIECES = {
    "os.sep": "import os",
    "LIMIT": "LIMIT = 3",
    "_twice(2)": "def _twice(x):\n    return x * FACTOR\n\nFACTOR = 2",  # a helper with a need of its own
    "Point(1, 2).x": "from collections import namedtuple\nPoint = namedtuple('Point', 'x y')",
    "len('ab')": "",  # a builtin
    "MISSING": None,
    "CONDITIONAL": None,  # bound only inside an `if`, below
}


@given(st.lists(st.sampled_from(sorted(PIECES)), min_size=1, unique=True), st.randoms(use_true_random=False))
def test_a_function_is_kept_exactly_when_its_names_resolve_and_then_runs_alone_as_in_its_module(uses, rng):
    statements = [code for code in PIECES.values() if code] + ["if True:\n    CONDITIONAL = 1"]
    rng.shuffle(statements)
    target = 'def target():\n    """Return what the pieces give, as a tuple."""\n    return (' + ", ".join(uses) + ",)"
    module = "\n\n".join(statements + [target]) + "\n"
    records, counts = mine_module(module, "planted", MiningCounts()), None
    assert bool(records) == all(PIECES[use] is not None for use in uses)
    if records:
        in_module, alone = {}, {}
        exec(module, in_module)
        exec(records[0]["code"], alone)
        assert alone["target"]() == in_module["target"]()
        assert free_names(records[0]["code"]) <= BUILTINS


def test_doctests_become_asserts_that_pass_the_function_and_fail_a_wrong_one():
    records, _ = mine('''
        def count_vowels(word):
            """Count the vowels of a word, in lower or upper case.

            >>> count_vowels("banana")
            3
            >>> letters = "AEIOUxyz"
            >>> count_vowels(letters) == 5
            True
            >>> count_vowels("")
            0
            >>> count_vowels(None)
            Traceback (most recent call last):
            AttributeError: 'NoneType' object has no attribute 'lower'
            >>> count_vowels("u")
            1
            """
            return sum(1 for c in word.lower() if c in "aeiou")
        ''')
    tests = records[0]["test_list"]
    assert tests == ["assert count_vowels('banana') == 3", "letters = 'AEIOUxyz'", "assert count_vowels(letters) == 5",
                     "assert count_vowels('') == 0"]  # stops at the traceback: what follows may need it
    assert run_program(records[0]["code"], tests).passed
    wrong = records[0]["code"].replace('c in "aeiou"', 'c in "aeiouy"')
    assert run_program(wrong, tests).status == "failed"


@pytest.mark.parametrize("docstring, tests", [
    (">>> 1 + 1 == 2\nTrue", ["assert 1 + 1 == 2"]),
    (">>> 1 == 2\nFalse", ["assert not 1 == 2"]),
    (">>> not 0\nTrue", ["assert (not 0) == True"]),
    (">>> [1,\n...  2]\n[1,\n 2]", ["assert [1, 2] == [1, 2]"]),
    (">>> print(3)\n3", []),
    (">>> object()\n<object object at 0x1>", []),
    (">>> 2 ** 10  # doctest: +SKIP\n1024", []),
    (">>> x = 1\n>>> y = 2", []),  # set-up alone tests nothing
])
def test_doctest_conversion(docstring, tests):
    assert doctest_asserts(docstring) == tests


def test_a_folder_with_a_file_that_does_not_parse_is_mined_around_it(tmp_path):
    (tmp_path / "good.py").write_text("def double(x):\n" + BODY.replace("x + 1", "2 * x"))
    (tmp_path / "bad.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_bytes(b"# -*- coding: latin-1 -*-\ndef caf\xe9(x):\n" + BODY.encode())
    (tmp_path / "pkg" / "latin.py").write_bytes(b"def f():\n    return '\xe9'\n")  # not UTF-8, no coding line
    for skipped in ("__pycache__/cached.py", "tests/checks.py", "test_good.py"):  # caches and tests are not read
        (tmp_path / skipped).parent.mkdir(exist_ok=True)
        (tmp_path / skipped).write_text("def check(x):\n" + BODY)
    mined = mine_source(str(tmp_path), check=False)
    assert (mined.counts.files, mined.counts.unparsable) == (4, 2)
    assert [r["task_id"] for r in mined.records] == ["mined/good.double", "mined/pkg.café"]
    assert module_name(tmp_path.relative_to(tmp_path) / "pkg" / "__init__.py") == "pkg"


def test_a_folder_fingerprint_follows_its_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    first = source_fingerprint(str(tmp_path))
    assert source_fingerprint(str(tmp_path)) == first
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_fingerprint(str(tmp_path)) != first


def test_a_record_that_copies_ten_words_of_humaneval_is_dropped():
    documents = evaluated_documents()
    copied = {"task_id": "mined/copied", "code": "def f():\n    pass\n",
              "text": "Write f: Check if in given list of numbers, are any two numbers closer to each other."}
    own = {"task_id": "mined/own", "code": "def g():\n    pass\n", "text": "Write g: return nothing at all."}
    assert drop_contaminated([copied, own], documents) == [own]


@pytest.fixture(scope="module")
def stdlib():
    """The stdlib mined once (about 10 s on 2 cores: parsing, the contamination check, the sandbox)."""
    return mine_source("stdlib")


def test_no_function_mined_from_the_stdlib_shares_ten_words_with_a_request_or_humaneval(stdlib):
    texts = [r[name] for r in stdlib.records for name in ("text", "code")]
    assert shared_ngrams(evaluated_documents(), texts, WINDOW) == []


def test_every_function_mined_from_the_stdlib_is_a_standalone_program(stdlib):
    assert len(stdlib.records) > 300, format_counts(stdlib.counts)
    for record in stdlib.records:
        tree = ast.parse(record["code"])
        assert record["entry_point"] in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert free_names(record["code"]) <= BUILTINS, record["task_id"]
        namespace = {}
        try:
            exec(compile(tree, record["task_id"], "exec"), namespace)
        except ImportError:  # a platform's module (winreg, msvcrt): carried, but not on this machine
            continue
        assert callable(namespace[record["entry_point"]])
        if record["test_list"]:
            validate_record(record)


def test_the_stdlib_counts_shrink_filter_by_filter(stdlib):
    counts = [getattr(stdlib.counts, f.name) for f in fields(MiningCounts) if f.name not in ("files", "unparsable")]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0
    assert stdlib.counts.clean == len(stdlib.records)
    assert stdlib.counts.verified == sum(r["verified"] for r in stdlib.records)
    valid = len(stdlib.split("valid"))
    assert 0 < valid < 0.1 * len(stdlib.records) and valid + len(stdlib.split("train")) == len(stdlib.records)
