"""The house: no import cycle, imports at the top of each module, modules a reader can finish."""
import ast
from pathlib import Path

import train
from minilm.stages import pipeline

PACKAGE = Path(__file__).resolve().parents[1] / "minilm"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, known: dict) -> str:
    """The module an import names: a submodule when `from package import submodule`."""
    return name if name in known else name.rpartition(".")[0]


def imports_of(name: str, path: Path, known: dict) -> list[tuple[str, bool]]:
    """(imported minilm module, whether the import sits inside a function or class) for every
    import statement of the module, however deep."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nested = {id(n) for top in tree.body if not isinstance(top, (ast.Import, ast.ImportFrom))
              for n in ast.walk(top) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .family import ...
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base == "minilm" or base.startswith("minilm."):
                for alias in node.names:
                    found.append((resolve(f"{base}.{alias.name}", known), id(node) in nested))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("minilm."):
                    found.append((resolve(alias.name, known), id(node) in nested))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports_of(name, path, known) if target != name}
            for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None
    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_the_package_imports_itself_at_the_top_of_each_module():
    """A minilm import inside a function hides the graph from a reader (and hid two cycles once)."""
    known = modules()
    nested = [f"{name} imports {target}" for name, path in known.items()
              for target, inside in imports_of(name, path, known) if inside]
    assert nested == []


def test_every_module_is_short_enough_to_read():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_a_dozen_modules_at_most_at_the_top():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 12, top


def test_train_py_knows_the_stages_in_order():
    """train.py checks --stage before importing torch, so it lists the stages itself."""
    assert train.STAGE_NAMES == pipeline.PIPELINE
