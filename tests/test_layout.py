"""The layout shows the architecture: the package's folders are its layers, in the order of
``attnkit.LAYERS`` (bottom up); a module imports only its own folder and the folders below
(imports inside functions count too); no import cycle; no source file over 400 lines. The
package root holds only the public entry points, above every layer, imported by none."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnkit"


def _layers() -> tuple[str, ...]:
    """``LAYERS`` as written in ``src/attnkit/__init__.py`` (read, not imported)."""
    for node in ast.parse((SRC / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["LAYERS"]:
            return ast.literal_eval(node.value)
    raise AssertionError("src/attnkit/__init__.py defines no LAYERS")


LAYERS = _layers()
ENTRY_POINTS = {"attnkit", "attnkit.__main__", "attnkit.cli", "attnkit.hf"}


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


def _entry_point(name: str) -> bool:
    """The root's public entry points and the ``python -m`` scripts (never imported)."""
    return name in ENTRY_POINTS or name.endswith(".__main__")


def _layer(name: str) -> int:
    """The index of the module's folder in LAYERS; entry points are above every layer."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS and not _entry_point(name):
        return LAYERS.index(parts[1])
    return len(LAYERS)


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
           if not _entry_point(a) and _layer(b) > _layer(a)]
    assert not bad, "\n".join(sorted(bad))


def test_every_module_is_in_a_layer_folder():
    """A new module goes in a layer folder; a new folder gets its place in LAYERS."""
    stray = sorted(n for n in _modules() if _layer(n) == len(LAYERS) and not _entry_point(n))
    assert not stray, (f"modules outside the layer folders {LAYERS} (add the folder to "
                       f"attnkit.LAYERS, bottom up): {stray}")
    missing = [f for f in LAYERS if not (SRC / f / "__init__.py").is_file()]
    assert not missing, f"LAYERS names folders that are not packages: {missing}"


def test_the_layers_are_the_folders():
    """Every package folder at the root is a layer (data folders hold no Python)."""
    folders = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert folders == set(LAYERS), (f"folders not in LAYERS: {sorted(folders - set(LAYERS))}; "
                                    f"LAYERS not folders: {sorted(set(LAYERS) - folders)}")


def test_the_layer_check_sees_a_wrong_import():
    """The check is live: a kernel importing the engine is an upward import."""
    assert _layer("attnkit.kernels.tiled") < _layer("attnkit.engine.functional")
    assert _layer("attnkit.core.errors") == 0 and _layer("attnkit.cli") == len(LAYERS)
    assert "attnkit.call" in _graph()["attnkit.kernels.tiled"]


def test_files_fit_in_one_sitting():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_architecture_doc_names_only_real_files():
    """Every path docs/architecture.md names in backticks exists (relative to src/attnkit/,
    or to the repository for tests/, benchmarks/, docs/)."""
    import re
    root = SRC.parents[1]
    doc = (root / "docs" / "architecture.md").read_text()
    paths = {t for t in re.findall(r"`([\w./-]+)`", doc) if "/" in t or t.endswith(".py")}
    assert len(paths) > 30, sorted(paths)                   # the doc does name its files
    top = ("src/", "tests/", "benchmarks/", "docs/")
    missing = sorted(p for p in paths if not ((root if p.startswith(top) else SRC) / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
