"""classify_failure on the verdicts the sandbox really writes, one program per category."""
import pytest

from minilm.evaluation.execution import run_programs
from minilm.evaluation.failures import CATEGORIES, classify_failure, parameters

# A task as minilm.data.tasks writes it (the fields classify_failure reads).
TASK = {"entry_point": "clamp_sum", "code": "def clamp_sum(t, val):\n    return min(t + val, 10)",
        "test_list": ["assert clamp_sum(1, 2) == 3", "assert clamp_sum(9, 4) == 10"]}

PROGRAMS = {  # category -> a program the model might have written for TASK
    "syntax": "def clamp_sum(t, val)\n    return min(t + val, 10)",
    "wrong_name": "def clamp_total(t, val):\n    return min(t + val, 10)",
    "wrong_arguments": "def clamp_sum(t):\n    return min(t, 10)",
    "wrong_logic": "def clamp_sum(t, val):\n    return max(t + val, 10)",
    "exception": "def clamp_sum(t, val):\n    return min([])",
}


def test_each_category_from_the_verdict_of_a_real_run():
    results = run_programs([(code, TASK["test_list"]) for code in PROGRAMS.values()])
    for (category, code), result in zip(PROGRAMS.items(), results):
        assert classify_failure(result.status, result.detail, code, TASK) == category, (result.status, result.detail)


@pytest.mark.parametrize("status, detail, code, category", [
    # the task's parameter names in another order: a wrong result, but the arguments are what went wrong
    ("failed", "assert clamp_sum(9, 4) == 10", "def clamp_sum(val, t):\n    return min(t - val, 10)",
     "wrong_arguments"),
    ("crashed", "assert clamp_sum(1, 2) == 3: TypeError: clamp_sum() got an unexpected keyword argument 'x'",
     "def clamp_sum(**kw): ...", "wrong_arguments"),
    # a TypeError inside its body is not about its own arguments
    ("crashed", "assert clamp_sum(1, 2) == 3: TypeError: min() takes 1 positional argument but 2 were given",
     "def clamp_sum(t, val):\n    return min(t, val, key=1)", "exception"),
    # a NameError of another name: a bug in the body
    ("crashed", "assert clamp_sum(1, 2) == 3: NameError: name 'total' is not defined",
     "def clamp_sum(t, val):\n    return total", "exception"),
    ("crashed", "while defining the program: NameError: name 'List' is not defined",
     "def clamp_sum(t: List, val): ...", "exception"),
    ("timeout", "still running after the 3 s wall-clock limit", "def clamp_sum(t, val):\n    while 1: pass",
     "other"),
    ("crashed", "killed by SIGKILL", "def clamp_sum(t, val): ...", "other"),
    ("prompt_too_long", "", "", "other"),
])
def test_categories_of_hand_made_verdicts(status, detail, code, category):
    assert category in CATEGORIES
    assert classify_failure(status, detail, code, TASK) == category


def test_parameters_reads_the_named_definition_only():
    assert parameters("def helper(a):\n    pass\ndef f(x, /, y, z=1, *rest, k=2): pass", "f") == ["x", "y", "z"]
    assert parameters("def f(x):\n  return (", "f") is None
    assert parameters("def g(x): pass", "f") is None
