"""attnkit's attention as Triton kernels (FlashAttention-2: forward, dQ, dK/dV).

The ``@triton.jit`` kernels live in ``jit/``. Whether Triton compiles a kernel for the
GPU or runs it in its interpreter (CPU, numpy) is fixed when the kernel is *decorated*
(Triton reads ``TRITON_INTERPRET`` then). So that one process can hold both -- CPU
tensors through the interpreter (tests), CUDA tensors compiled -- :func:`kernels`
imports the ``jit`` sources once per mode, as two separate module trees
(``attnkit.kernels.triton._jit_interpret`` / ``._jit_compiled``), with the variable set
accordingly while they are imported. Nothing else in the process is affected.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import types
from pathlib import Path

__all__ = ["available", "kernels", "interpreter_requested", "interpreter_unsupported"]

# Triton's interpreter before 3.8 fails on these kernels (3.6.0 with numpy 2: "only
# 0-dimensional arrays can be converted to Python scalars" at the tile loop); 3.8.0 and
# 3.9.0 pass tests/test_triton.py. The compiled (GPU) path asks for no particular version.
MIN_INTERPRETER = (3, 8)

_JIT_DIR = Path(__file__).with_name("jit")
_LOCK = threading.Lock()


def available() -> str | None:
    """None if triton can be imported, else the reason."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return (f"triton is not installed or does not import ({type(e).__name__}: {e}); "
                "pip install triton (Linux x86_64 wheels)")
    return None


def interpreter_unsupported() -> str | None:
    """None if this triton's interpreter runs the kernels, else the reason."""
    import triton
    try:
        version = tuple(int(x) for x in triton.__version__.split(".")[:2])
    except ValueError:
        return None  # a development build: let it try
    if version < MIN_INTERPRETER:
        need = ".".join(map(str, MIN_INTERPRETER))
        return (f"Triton's interpreter before {need} cannot run these kernels (found triton "
                f"{triton.__version__}); pip install 'triton>={need}' for the CPU tests")
    return None


def interpreter_requested() -> bool:
    """Is ``TRITON_INTERPRET=1`` set in the environment (now)?"""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels(interpret: bool) -> types.ModuleType:
    """The ``jit`` package decorated for the interpreter (``interpret=True``) or for the
    GPU; modules ``forward`` and ``backward`` as attributes. Imported once per mode."""
    name = f"{__name__}._jit_{'interpret' if interpret else 'compiled'}"
    with _LOCK:
        pkg = sys.modules.get(name)
        if pkg is not None and hasattr(pkg, "backward"):
            return pkg
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(_JIT_DIR)]          # a package over the same sources
        pkg.__package__ = name
        pkg.__file__ = str(_JIT_DIR / "__init__.py")
        pkg.INTERPRET = interpret
        sys.modules[name] = pkg
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            for sub in ("common", "forward", "backward"):
                setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))
        except BaseException:
            for sub in ("common", "forward", "backward"):
                sys.modules.pop(f"{name}.{sub}", None)
            sys.modules.pop(name, None)
            raise
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
        return pkg
