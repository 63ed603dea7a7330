"""The layout shows the architecture: no import cycle among attnkit's modules (imports inside
functions count too), the layers import only downwards, and no source file over 400 lines."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnkit"

# bottom-up layers; a module may import its own layer and the layers below it
LAYERS = [
    {"_checks", "errors", "_version", "requirements"},
    {"masks"},
    {"bias", "call", "sparse.pattern", "sparse.window", "sparse.strided", "sparse.fixed",
     "sparse.dilated", "sparse.longformer", "sparse.bigbird", "sparse.log_sparse",
     "sparse.registry"},
    {"kernels", "linear"},
    {"backends", "functional", "sparse", "sparse.execute", "patterns", "variants", "distributed"},
    {"modules"},
    {"models", "loading"},
    {"integrations", "hf"},
    {"analysis", "bench", "tasks", "train", "adaptation", "tour", "demo", "commands", "cli",
     "__main__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["attnkit", *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """attnkit modules imported anywhere in the file (relative and absolute)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from x import y` imports x.y when y is a module, else x
            mods = [f"{root}.{a.name}" if f"{root}.{a.name}" in known else root
                    for a in node.names]
        else:
            continue
        out |= {m for m in mods if m in known and m != name}
    return out


def _graph():
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _layer(name: str) -> int:
    short = name.removeprefix("attnkit").lstrip(".")
    for depth in range(short.count(".") + 1, 0, -1):   # the most specific entry wins
        key = ".".join(short.split(".")[:depth])
        for i, layer in enumerate(LAYERS):
            if key in layer:
                return i
    return len(LAYERS)  # the package root: above everything


def test_no_import_cycle():
    graph = _graph()
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_layers_import_only_downwards():
    graph = _graph()
    bad = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
           for a, deps in graph.items() for b in deps
           if a != "attnkit" and _layer(b) > _layer(a)]
    assert not bad, "\n".join(sorted(bad))


def test_every_module_has_a_layer():
    missing = [n for n in _modules() if n != "attnkit" and _layer(n) == len(LAYERS)]
    assert not missing, f"modules with no layer in LAYERS: {missing}"


def test_files_fit_in_one_sitting():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"
