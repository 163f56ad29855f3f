"""What went wrong in a failed program: one category from the executor's verdict and the task.

The sandbox (minilm/evaluation/harness.py) reports each program as a status and a detail:
    syntax_error  "SyntaxError: invalid syntax (candidate.py, line 2)"      it did not compile
    crashed       "while defining the program: NameError: ..."              running its definitions raised
                  "assert f(1) == 2: TypeError: f() takes 1 positional ..."  a test's call raised
                  "killed by SIGKILL", "exited with code 1 before ..."      no exception to read
    failed        "assert f(1) == 2"                                        a test's assert was false
    timeout       "still running after the 3 s wall-clock limit"
and minilm/evaluation/evaluate.py adds prompt_too_long (the prompt alone filled the context). From these and
the task (its entry_point and reference code), classify_failure names one of CATEGORIES.
"""
from __future__ import annotations

import ast
from typing import Optional

# How minilm.evaluation.execution words a crash with no exception to read (a signal, an exit from the program).
NO_EXCEPTION = ("killed by ", "exited with code ")
CATEGORIES = ("syntax", "wrong_name", "wrong_arguments", "wrong_logic", "exception", "other")
DESCRIPTIONS = {
    "syntax": "does not compile",
    "wrong_name": "the task's function is not defined (the tests' call: NameError naming it)",
    "wrong_arguments": "its parameters are not the task's (TypeError about its own arguments, or the task's "
                       "parameter names in another order)",
    "wrong_logic": "runs, returns a wrong result (a test's assert is false)",
    "exception": "raises another exception (e.g. ValueError, IndexError, a TypeError in its body)",
    "other": "timeout, killed, or the prompt did not fit the context",
}


def parameters(code: str, name: str) -> Optional[list[str]]:
    """The positional parameter names of `def name(...)` in code; None if it does not parse or has none."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return [a.arg for a in node.args.posonlyargs + node.args.args]
    return None


def classify_failure(status: str, detail: str, completion: str, task: dict) -> str:
    """The category of one failed program (status != "passed") written for a code task."""
    name = task["entry_point"]
    if status == "syntax_error" or "SyntaxError:" in detail:
        return "syntax"
    if status not in ("failed", "crashed") or detail.startswith(NO_EXCEPTION):
        return "other"  # timeout, prompt_too_long, killed by a signal, exited
    if f"NameError: name '{name}' is not defined" in detail:
        return "wrong_name"
    if f"TypeError: {name}() " in detail and "argument" in detail:
        return "wrong_arguments"  # "takes 1 positional argument but 2 were given", "missing 1 required ..."
    written, wanted = parameters(completion, name), parameters(task.get("code", ""), name)
    if written and wanted and written != wanted and sorted(written) == sorted(wanted):
        return "wrong_arguments"  # "def f(val, t)" for "takes an integer t and an integer val"
    return "wrong_logic" if status == "failed" else "exception"
