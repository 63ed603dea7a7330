"""Issue 23's move of the package root into layer folders, as a script (idempotent).

``python scripts/relayout.py`` moves the files (``git mv``) if they are still at their old
places, then rewrites every import of a moved module -- relative imports in ``src/attnkit``
recomputed from each file's new place, absolute ``attnkit.X`` names in src, tests,
benchmarks and docs -- so a branch written against the old layout can be brought over by
running it again after a merge. It prints the statements it cannot rewrite mechanically.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# old module -> new module (a file move; ``attnkit.call`` becomes a package)
MOVES = {
    "attnkit.errors": "attnkit.core.errors",
    "attnkit._checks": "attnkit.core.checks",
    "attnkit._version": "attnkit.core.version",
    "attnkit.requirements": "attnkit.commands.requirements",
    "attnkit.bias": "attnkit.call.bias",
    "attnkit.call": "attnkit.call",
    "attnkit.functional": "attnkit.engine.functional",
    "attnkit.variants": "attnkit.engine.variants",
    "attnkit.sparse.execute": "attnkit.engine.sparse",
    "attnkit.tour": "attnkit.commands.tour",
    "attnkit.demo": "attnkit.commands.demo",
    "attnkit.cli": "attnkit.commands.main",
}
# where each moved module's file goes (call.py becomes the package call/)
FILES = {"attnkit.call": "attnkit/call/__init__.py"}
KEEP_AT_ROOT = {"attnkit.cli"}   # the console-script entry point stays, as a re-export


def _path(mod: str, package: bool = False) -> Path:
    rel = mod.replace(".", "/")
    return SRC / (FILES.get(mod) or (rel + ("/__init__.py" if package else ".py")))


def new_name(mod: str) -> str:
    for old in sorted(MOVES, key=len, reverse=True):
        if mod == old or mod.startswith(old + "."):
            return MOVES[old] + mod[len(old):]
    return mod


def move_files() -> None:
    for old, new in MOVES.items():
        src = SRC / (old.replace(".", "/") + ".py")
        dst = _path(new) if old not in FILES else SRC / FILES[old]
        if old in KEEP_AT_ROOT or not src.exists() or dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "mv", str(src), str(dst)], check=True, cwd=ROOT)


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "attnkit").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _relative(target: str, package: str) -> str:
    t, p = target.split("."), package.split(".")
    common = 0
    while common < min(len(t), len(p)) and t[common] == p[common]:
        common += 1
    return "." * (len(p) - common + 1) + ".".join(t[common:])


OLD_OF = {new: old for old, new in MOVES.items()}


def rewrite_imports(path: Path, name: str, known_old: set[str], problems: list,
                    known_new: set[str] = frozenset()) -> str:
    """Rewrite the file's imports; ``name`` is its (new) module name. An import that already
    resolves from the file's new place is kept (a merge may mix old and new lines)."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    old_name = OLD_OF.get(name, name)
    old_is_pkg = path.name == "__init__.py" and old_name not in FILES
    new_pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    old_pkg = old_name if old_is_pkg else old_name.rsplit(".", 1)[0]
    edits = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            here = new_pkg.split(".")
            tail = [node.module] if node.module else []
            here = ".".join(here[:len(here) - node.level + 1] + tail)
            base = old_pkg.split(".")
            base = ".".join(base[:len(base) - node.level + 1] + tail)
            moved = any(f"{base}.{a.name}" in MOVES and f"{here}.{a.name}" not in known_new
                        for a in node.names)
            if here in known_new and not moved:
                continue                            # already written for the new layout
        elif (node.module or "").split(".")[0] == "attnkit":
            if node.module in known_new:
                continue
            base = node.module
        else:
            continue
        parents = set()
        for a in node.names:
            full = f"{base}.{a.name}"
            if full in known_old:
                moved = new_name(full)
                if moved.rsplit(".", 1)[1] != a.name:
                    problems.append(f"{path}:{node.lineno}: imports module {full} renamed {moved}")
                parents.add(moved.rsplit(".", 1)[0])
            else:
                parents.add(new_name(base))
        if len(parents) != 1:
            problems.append(f"{path}:{node.lineno}: names move to several modules {parents}")
            continue
        target = parents.pop()
        module = _relative(target, new_pkg) if node.level else target
        edits.append((node.lineno - 1, module))
    for i, module in edits:
        lines[i] = re.sub(r"^(\s*from\s+)(\S+)(\s+import\b)", lambda m: m[1] + module + m[3],
                          lines[i], count=1)
    return "".join(lines)


def rename_dotted(text: str) -> str:
    """``attnkit.functional.x`` -> ``attnkit.engine.functional.x`` (strings, docs, tests)."""
    for old in sorted(MOVES, key=len, reverse=True):
        if old in KEEP_AT_ROOT or MOVES[old] == old:
            continue
        text = re.sub(rf"(?<![\w.]){re.escape(old)}\b(?!\.py)", MOVES[old], text)
    return text


def main() -> int:
    known_old = {OLD_OF.get(m, m) for m in _modules()} | set(MOVES)
    move_files()
    problems: list[str] = []
    known_new = set(_modules())
    for name, path in _modules().items():
        new = rewrite_imports(path, name, known_old, problems, known_new)
        new = rename_dotted(new)
        if new != path.read_text():
            path.write_text(new)
    for folder in ("tests", "benchmarks", "docs"):
        for p in (ROOT / folder).rglob("*.py"):
            new = rename_dotted(p.read_text())
            if new != p.read_text():
                p.write_text(new)
    print("\n".join(problems) or "all imports rewritten")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
