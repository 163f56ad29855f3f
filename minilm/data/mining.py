"""How one Python file's functions become fine-tuning tasks: an `ast` pass, filter by filter.

    counts = MiningCounts()
    records = mine_module(source_text, "json.decoder", counts)   # task records, in file order

A module-level function becomes a task when it passes, in this order (each count in MiningCounts):

    public          its name does not start with "_"
    documented      a docstring whose first paragraph has MIN_WORDS words or more (the request)
    short           at most MAX_LINES lines of code once the docstring is out
    plain           a plain `def`: not async, no `global` / `nonlocal`, no `self` / `cls` first
                    parameter, decorators that are names or calls of names, a body besides the docstring
    self_contained  every free name (of its body, defaults, annotations and decorators) is a
                    builtin, a module-level import of the file, or a small module-level helper
                    (function, class or assignment of at most MAX_LINES lines) that is itself
                    self-contained; the task's code carries those imports and helpers, and
                    has at most MAX_EXAMPLE_LINES lines with them

The request (`text`) is the docstring's first paragraph with the signature; the target (`code`) is
the carried imports, the helpers in file order, then the function without its docstring: the
request already says it, so keeping it would teach the model to copy the request into the answer,
and the suite's reference code has none. Star-args are kept: the code is the function as written.

The docstring's doctests become `test_list` (doctest_asserts): `>>> expr` with an expected value
that is a Python literal becomes `assert expr == value`, a `>>>` statement without output stays a
statement (later examples may use what it binds); conversion stops at the first example it cannot
take (a traceback, printed output, an object's repr, a doctest directive).
"""
from __future__ import annotations

import ast
import builtins
import doctest
import io
import math
import symtable
import tokenize
from dataclasses import dataclass, field, fields
from typing import Optional, Union

MAX_LINES = 30  # of the function's code; also the most a carried helper may have
MAX_EXAMPLE_LINES = 2 * MAX_LINES  # of the whole code, carried imports and helpers included
MIN_WORDS = 3  # in the docstring's first paragraph: "Deprecated." is no request
# Names site.py adds to builtins for the interactive prompt: not a program's to call.
_SITE_NAMES = {"exit", "quit", "copyright", "credits", "license", "help"}
# Of the builtins module's dunders, only these are a program's builtins (not __name__, __doc__, ...).
_COMPREHENSIONS = ("listcomp", "setcomp", "dictcomp", "genexpr")
BUILTINS = {n for n in dir(builtins) if not n.startswith("__") and n not in _SITE_NAMES} | {
    "__import__", "__build_class__", "__debug__"}


@dataclass
class MiningCounts:
    """How many remain after each filter, in order (the table `format_counts` prints)."""
    files: int = field(default=0, metadata={"what": ".py files read"})
    unparsable: int = field(default=0, metadata={"what": "files that do not decode or parse"})
    functions: int = field(default=0, metadata={"what": "module-level functions seen"})
    public: int = field(default=0, metadata={"what": "name not starting with _"})
    documented: int = field(default=0, metadata={"what": f"a docstring of {MIN_WORDS}+ words"})
    short: int = field(default=0, metadata={"what": f"at most {MAX_LINES} lines of code"})
    plain: int = field(default=0, metadata={"what": "plain def: sync, no global/self/odd decorator"})
    self_contained: int = field(default=0, metadata={"what": "free names: builtins, imports, small helpers"})
    clean: int = field(default=0, metadata={"what": "no 10 words in a row shared with requests/HumanEval"})
    with_doctests: int = field(default=0, metadata={"what": "of those, doctests turned into asserts"})
    verified: int = field(default=0, metadata={"what": "of those, doctests pass in the sandbox"})

    def add(self, other: "MiningCounts") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def format_counts(counts: MiningCounts) -> str:
    """The counts as a Markdown table: filter, kept, what it checks."""
    rows = [f"| {f.name} | {getattr(counts, f.name):,} | {f.metadata['what']} |" for f in fields(counts)]
    return "\n".join(["| filter | kept | what |", "|---|---|---|", *rows])


def free_names(source: str) -> set[str]:
    """The names a piece of module code looks up without binding them itself (symtable's scopes:
    a nested function's own locals and its enclosing function's are not free)."""
    at_definition, at_call = free_names_by_time(source)
    return at_definition | at_call


def free_names_by_time(source: str) -> tuple[set[str], set[str]]:
    """free_names, split by when they are looked up: as the code runs at import (an assignment, a
    class body, a def's decorators, defaults and annotations), or only once a function is called."""
    top = symtable.symtable(source, "<mined>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    needed = ({s.get_name() for s in top.get_symbols() if s.is_referenced() and s.get_name() not in bound}, set())
    stack = [(table, False) for table in top.get_children()]
    while stack:
        table, deferred = stack.pop()
        # a function's body runs when called; a comprehension's (its own scope before 3.12) at once
        deferred = deferred or (table.get_type() == "function" and table.get_name() not in _COMPREHENSIONS)
        needed[deferred].update(s.get_name() for s in table.get_symbols() if s.is_global())
        needed[deferred].difference_update(bound)
        stack += [(child, deferred) for child in table.get_children()]
    return needed


def doctest_asserts(docstring: str) -> list[str]:
    """The docstring's doctests as test statements (rules in the module docstring); [] without an assert."""
    tests = []
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:  # malformed doctest layout
        return []
    for example in examples:
        test = _example_as_test(example)
        if test is None:
            break
        tests.append(test)
    while tests and not tests[-1].startswith("assert "):  # trailing set-up tests nothing
        tests.pop()
    return tests


def _example_as_test(example: doctest.Example) -> Optional[str]:
    if example.options:  # +SKIP, +ELLIPSIS, ...: not a plain comparison
        return None
    want = example.want.strip()
    try:
        if not want:
            return ast.unparse(ast.parse(example.source, mode="exec"))
        expr = ast.parse(example.source, mode="eval")
        value = ast.parse(want, mode="eval")
        ast.literal_eval(value)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    call = expr.body
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print":
        return None  # printed output, not a value
    if isinstance(call, ast.Compare) and want in ("True", "False"):  # `>>> a == b` / True: assert a == b
        return f"assert {'' if want == 'True' else 'not '}{ast.unparse(expr)}"
    left = ast.unparse(expr)
    if isinstance(call, (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.IfExp, ast.Lambda, ast.NamedExpr)):
        left = f"({left})"  # `a == b == True` would chain; `not a == b` would bind the wrong way
    return f"assert {left} == {ast.unparse(value)}"


@dataclass(frozen=True)
class Binding:
    """Where the module's body binds a name: an import (its line) or a statement (index, source)."""
    position: int  # index of the statement in the module's body
    code: str  # "import os.path" / "from json import loads as l" / the statement's source
    is_import: bool
    relative: bool = False  # `from . import x`: nothing to import outside the package


class ModuleScope:
    """A module's top-level bindings, and which of them a function needs (`carry`)."""

    def __init__(self, tree: ast.Module, lines: list[str]):
        self.lines = lines
        self.bindings: dict[str, list[Binding]] = {}
        for position, node in enumerate(tree.body):
            for name, binding in self._bound_by(position, node):
                self.bindings.setdefault(name, []).append(binding)

    def source_of(self, node: ast.stmt) -> str:
        """The statement's lines, decorators included."""
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])
        return "\n".join(self.lines[first - 1:node.end_lineno])

    def _bound_by(self, position: int, node: ast.stmt):
        if isinstance(node, ast.Import):
            for alias in node.names:
                line = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                yield alias.asname or alias.name.partition(".")[0], Binding(position, line, True)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                line = (f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                        + (f" as {alias.asname}" if alias.asname else ""))
                yield alias.asname or alias.name, Binding(position, line, True, relative=node.level > 0)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, Binding(position, self.source_of(node), False)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for name in names:
                yield name, Binding(position, self.source_of(node), False)

    def carry(self, code: str, own: str, position: int) -> Optional[dict[tuple[int, str], Binding]]:
        """The bindings `code` (the definition of `own`, statement `position` of the body) needs,
        helpers' needs included; None when a free name resolves to nothing a standalone program
        could carry."""
        carried: dict[tuple[int, str], Binding] = {}
        pending = self._needs(code, position)
        while pending:
            name, before = pending.pop()
            found = self.bindings.get(name, [])
            if not found:
                if name in BUILTINS:
                    continue
                return None  # a name only bound inside an `if` / `try`, or not at all
            if len(found) > 1:
                return None  # bound twice: which one the function sees depends on the order run
            binding = found[0]
            if binding.position >= before:
                return None  # looked up at import before this binding: another one (a star import's)
            key = (binding.position, binding.code)
            if name == own or key in carried:
                continue
            if binding.relative or (not binding.is_import and len(binding.code.splitlines()) > MAX_LINES):
                return None
            carried[key] = binding
            if not binding.is_import:
                pending += self._needs(binding.code, binding.position)
        return carried

    @staticmethod
    def _needs(code: str, position: int) -> list[tuple[str, float]]:
        """(name, the statement it must be bound before) for each free name of code at `position`."""
        at_definition, at_call = free_names_by_time(code)
        return sorted([(name, position) for name in at_definition] + [(name, math.inf) for name in at_call])


def _signature(node: ast.FunctionDef) -> str:
    return f"{node.name}({ast.unparse(node.args)})"


def _first_paragraph(docstring: str) -> str:
    return " ".join(docstring.strip().split("\n\n")[0].split())


def _without_docstring(lines: list[str], node: ast.FunctionDef, first: int) -> Optional[str]:
    """The function's source from its first decorator, its docstring's lines cut out; None when
    the docstring shares a line with code or is the whole body."""
    doc = node.body[0]
    if len(node.body) < 2 or lines[doc.lineno - 1][:doc.col_offset].strip() or \
            lines[doc.end_lineno - 1][doc.end_col_offset:].strip() not in ("", ";"):
        return None
    kept = lines[first - 1:doc.lineno - 1] + lines[doc.end_lineno:node.end_lineno]
    return "\n".join(kept)


def _is_plain(node, args: list[str]) -> bool:
    if not isinstance(node, ast.FunctionDef) or (args and args[0] in ("self", "cls")):
        return False
    if any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in ast.walk(node)):
        return False
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if not isinstance(target, (ast.Name, ast.Attribute)):
            return False
    return True


def mine_module(source: Union[bytes, str], module: str, counts: MiningCounts, path: str = "") -> list[dict]:
    """Task records for the functions of one module's source (a file's bytes, decoded as its coding
    line says, or text) that pass every filter, counted in `counts`; a file that does not decode or
    parse is counted as unparsable. `module` is its dotted name, `path` where a record says it came from."""
    counts.files += 1
    try:
        text = source if isinstance(source, str) else \
            source.decode(tokenize.detect_encoding(io.BytesIO(source).readline)[0])
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, LookupError, ValueError):  # ValueError: null bytes
        counts.unparsable += 1
        return []
    lines = text.replace("\r\n", "\n").split("\n")
    scope = ModuleScope(tree, lines)
    records = []
    for position, node in enumerate(tree.body):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        counts.functions += 1
        if node.name.startswith("_"):
            continue
        counts.public += 1
        docstring = ast.get_docstring(node)
        if not docstring or len(_first_paragraph(docstring).split()) < MIN_WORDS:
            continue
        counts.documented += 1
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        code = _without_docstring(lines, node, first) if isinstance(node, ast.FunctionDef) else None
        if code is not None and len(code.splitlines()) > MAX_LINES:
            continue
        counts.short += 1
        args = [a.arg for a in node.args.posonlyargs + node.args.args]
        if code is None or not _is_plain(node, args):
            continue
        counts.plain += 1
        carried = scope.carry(code, node.name, position)
        if carried is None:
            continue
        imports = [b.code for _, b in sorted(carried.items()) if b.is_import]
        helpers = [b.code for _, b in sorted(carried.items()) if not b.is_import]
        full_code = "\n\n".join((["\n".join(imports)] if imports else []) + helpers + [code]) + "\n"
        if len(full_code.splitlines()) > MAX_EXAMPLE_LINES:
            continue
        counts.self_contained += 1
        qualname = f"{module}.{node.name}"
        records.append({
            "task_id": f"mined/{qualname}", "kind": "generate", "family": "mined", "entry_point": node.name,
            "text": f"Write a function `{_signature(node)}`: {_first_paragraph(docstring)}",
            "code": full_code, "test_list": doctest_asserts(docstring), "source": f"{path or module}:{first}",
        })
    return records
