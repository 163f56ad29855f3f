"""Repair tasks: plant one small bug in a reference solution.

A mutation is one edit of the syntax tree, of the kinds a programmer actually makes:

    off_by_one        an integer constant moved by one      range(2, n + 1) -> range(2, n + 2)
    wrong_operator    an arithmetic operator swapped        a + b -> a - b
    wrong_comparison  a comparison swapped                  x > 0 -> x >= 0, x > 0 -> x < 0
    wrong_call        a builtin or method swapped           max(...) -> min(...)
    wrong_return      the function returns its argument     return s[::-1] -> return s

`plant_bug` tries the possible mutations in a random order (wrong_return last) and keeps the first
one that makes at least one test fail, so every buggy program is observably buggy. Reference solutions are written
the way `ast.unparse` prints them, so the buggy code differs from the fix only at the bug.
Solutions contain no `while` loops, so a mutant cannot spin forever in-process (runaway recursion
ends in RecursionError).
"""
from __future__ import annotations

import ast
import random

# Each comparison has a subtle swap (the boundary) and a blunt one (the direction).
COMPARISONS = {ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt, ast.GtE), ast.Gt: (ast.GtE, ast.Lt),
               ast.GtE: (ast.Gt, ast.LtE), ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,),
               ast.In: (ast.NotIn,), ast.NotIn: (ast.In,)}
OPERATORS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Div: ast.FloorDiv,
             ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
CALLS = {"max": "min", "min": "max", "sum": "len", "len": "sum", "sorted": "list", "upper": "lower",
         "lower": "upper", "startswith": "endswith", "endswith": "startswith", "index": "count",
         "count": "index", "values": "keys", "keys": "values", "split": "strip"}


def mutations(tree: ast.AST) -> list[tuple[int, str, int]]:
    """Every (node index in ast.walk order, bug kind, variant) that `apply_mutation` can make in `tree`."""
    args = [a.arg for a in tree.body[0].args.args]
    sites = []
    for index, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append((index, "off_by_one", 0))
        elif isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            sites.append((index, "wrong_operator", 0))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARISONS:
            sites += [(index, "wrong_comparison", v) for v in range(len(COMPARISONS[type(node.ops[0])]))]
        elif isinstance(node, ast.Call) and _call_name(node) in CALLS:
            sites.append((index, "wrong_call", 0))
        elif isinstance(node, ast.Return) and not (isinstance(node.value, ast.Name) and node.value.id == args[0]):
            sites.append((index, "wrong_return", 0))
    return sites


def apply_mutation(tree: ast.AST, index: int, kind: str, variant: int = 0) -> str:
    """Source of `tree` with the node at `index` (ast.walk order) mutated by `kind`; `tree` is
    restored afterwards (editing in place and undoing is much cheaper than a deep copy)."""
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == index)
    field = {"off_by_one": "value", "wrong_operator": "op", "wrong_comparison": "ops",
             "wrong_return": "value"}.get(kind, "func")
    if kind == "wrong_call":
        field = "id" if isinstance(node.func, ast.Name) else "attr"
        node = node.func
    original = getattr(node, field)
    if kind == "off_by_one":
        mutant = original + 1 if original <= 1 else original - 1   # keep `% 2` and `[::-1]` meaningful
    elif kind == "wrong_operator":
        mutant = OPERATORS[type(original)]()
    elif kind == "wrong_comparison":
        mutant = [COMPARISONS[type(original[0])][variant]()] + original[1:]
    elif kind == "wrong_call":
        mutant = CALLS[original]
    elif kind == "wrong_return":
        mutant = ast.Name(id=tree.body[0].args.args[0].arg, ctx=ast.Load())
    else:
        raise ValueError(f"unknown mutation kind {kind!r}; expected one of off_by_one, wrong_operator, "
                         f"wrong_comparison, wrong_call, wrong_return")
    setattr(node, field, mutant)
    try:
        return ast.unparse(tree)
    finally:
        setattr(node, field, original)


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def passes(code: str, tests) -> bool:
    """Run `code` and its assert tests in-process; True if every test passes.

    For trusted, generated code only (no sandbox, no timeout): the sandboxed runner is
    `minilm.evaluation.execution.run_program`."""
    try:
        # One compile for the program and all its asserts: compiling is most of the cost.
        exec(code + "\n" + "\n".join(tests), {})
    except Exception:   # a failing assert, or any crash of a buggy program, is a failure
        return False
    return True


def plant_bug(code: str, tests, rng: random.Random) -> tuple[str, str] | None:
    """(buggy_code, bug kind) for the first random mutation of `code` that fails a test, or None."""
    tree = ast.parse(code)
    sites = mutations(tree)
    rng.shuffle(sites)
    sites.sort(key=lambda site: site[1] == "wrong_return")   # the bluntest bug only as a last resort
    for index, kind, variant in sites:
        buggy = apply_mutation(tree, index, kind, variant)
        if buggy != code and not passes(buggy, tests):
            return buggy, kind
    return None
