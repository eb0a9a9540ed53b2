"""The package's import graph, read with ``ast`` from the source: no import circle, and no module imports a
module on a higher floor (README, Architecture: the arrows point one way). Imports inside functions count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ser_tune"

# Floors, lowest first: a module may import from its own floor and the ones below. A module's floor is
# that of the longest name listed that it is, or sits inside (names relative to ser_tune).
FLOORS = [
    ("schema", "objectives"),                              # the YAML schema's words; objectives and constraints
    ("data",),                                             # corpora, splits, audio
    ("encoders",),                                         # speech encoders, the feature cache
    ("training",),                                         # one fine-tuning run, heads, export
    ("search",),                                           # the space and one module per strategy
    ("config",),                                           # the experiment file over all of the above
    ("study",),                                            # the driver, the study folder, the Ray session
    ("strategies", "active", "adapt", "crosscorpus"),      # kinds of study on the driver
    ("results",),                                          # tables, statistics, plots, the report
    ("", "launch", "train", "predict", "data.__main__", "results.__main__", "active.__main__",
     "adapt.__main__", "crosscorpus.__main__"),            # the command lines, on top
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """The module a dotted name (relative to ser_tune) is, or sits in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(name: str) -> set[str]:
    """The ser_tune modules ``name`` imports (relative names; "" is the package itself)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
                origin = "ser_tune." + module if module else "ser_tune"
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" for a in node.names] + [origin]
            # `from x import y` imports y when y is a module, else x
            targets = [t for t in targets[:-1] if t.removeprefix("ser_tune.") in MODULES] or [origin]
        else:
            continue
        for target in targets:
            if target == "ser_tune" or target.startswith("ser_tune."):
                found.add(resolve(target.removeprefix("ser_tune").lstrip(".")))
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def floor_of(name: str) -> int:
    best, floor = -1, None
    for level, names in enumerate(FLOORS):
        for listed in names:
            inside = listed == "" or name == listed or name.startswith(listed + ".")
            if inside and len(listed) > best:
                best, floor = len(listed), level
    return floor


def test_the_graph_is_read_from_the_source():
    # a few imports known to exist, so an empty graph (a parser that finds nothing) cannot pass
    assert "study.folder" in GRAPH["results.tables"]
    assert "objectives" in GRAPH["config"]
    assert "encoders.cache" in GRAPH["training.finetune"]     # an import inside a function counts too
    assert len(MODULES) > 80


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n))
def test_no_module_imports_from_a_higher_floor(name):
    floor = floor_of(name)
    higher = sorted(t for t in GRAPH[name] if floor_of(t) > floor)
    assert not higher, f"{name} (floor {floor}) imports from higher floors: " + ", ".join(
        f"{t} (floor {floor_of(t)})" for t in higher)


def test_there_is_no_import_circle():
    # Tarjan's strongly connected components: any with two or more modules is a circle
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)
