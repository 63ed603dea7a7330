"""The process settings that change a run's numbers, saved beside its config.

``config.json`` says *what* is trained; ``settings.json`` says how this process
computed it: the torch CPU thread count (the order of float sums in matmul and
reductions depends on it), deterministic-algorithm mode, the default dtype, the fp32
matmul precision, the cuDNN flags on a GPU, and the torch version. A fresh run writes
them once; ``--resume`` restores every one that a process can set, so ``--resume DIR``
alone continues bit-identically, and names each one it cannot restore (or that the
caller overrode) in a warning.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["current_settings", "restore_settings", "apply_threads", "SETTINGS_FILE"]

SETTINGS_FILE = "settings.json"


def apply_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (None: leave torch's choice)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
    torch.set_num_threads(threads)


def current_settings(device: str) -> dict:
    s = {"threads": torch.get_num_threads(),
         "deterministic": torch.are_deterministic_algorithms_enabled(),
         "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
         "float32_matmul_precision": torch.get_float32_matmul_precision(),
         "torch": torch.__version__}
    if device.startswith("cuda"):
        s.update(cudnn_deterministic=torch.backends.cudnn.deterministic,
                 cudnn_benchmark=torch.backends.cudnn.benchmark,
                 cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                 matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return s


def _set(name: str, value) -> None:
    if name == "threads":
        torch.set_num_threads(int(value))
    elif name == "deterministic":
        torch.use_deterministic_algorithms(bool(value))
    elif name == "default_dtype":
        torch.set_default_dtype(getattr(torch, value))
    elif name == "float32_matmul_precision":
        torch.set_float32_matmul_precision(value)
    elif name == "cudnn_deterministic":
        torch.backends.cudnn.deterministic = bool(value)
    elif name == "cudnn_benchmark":
        torch.backends.cudnn.benchmark = bool(value)
    elif name == "cudnn_allow_tf32":
        torch.backends.cudnn.allow_tf32 = bool(value)
    elif name == "matmul_allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = bool(value)
    else:
        raise KeyError(name)


def save_settings(out: Path, device: str) -> dict:
    from .checkpoint import write_atomic
    s = current_settings(device)
    write_atomic(Path(out) / SETTINGS_FILE, json.dumps(s, indent=1, sort_keys=True))
    return s


def restore_settings(out: Path, device: str, threads: int | None) -> list[str]:
    """Restore the settings saved in ``out``; ``threads`` (not None) is the caller's
    explicit choice and wins. Returns one warning per setting that differs from the
    saved run's (empty: the resumed run computes exactly as the original)."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        return [f"{path}: missing (a run from an older attnkit); run settings not restored "
                f"(threads now {torch.get_num_threads()}): the resumed run may differ from an "
                f"uninterrupted one in the last bits"]
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return [f"{path}: unreadable ({e}); run settings not restored"]
    now = current_settings(device)
    warnings = []
    for name, value in saved.items():
        if name == "torch":
            if value != now["torch"]:
                warnings.append(f"the run was started with torch {value}, this is "
                                f"{now['torch']}: results may differ in the last bits")
            continue
        if name == "threads" and threads is not None:
            if threads != value:
                warnings.append(f"--threads {threads} differs from the run's {value} "
                                f"(saved in {SETTINGS_FILE}): the resumed run will not be "
                                f"bit-identical to an uninterrupted one")
            continue
        if now.get(name) == value:
            continue
        try:
            _set(name, value)
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
            warnings.append(f"cannot restore {name}={value!r} from {SETTINGS_FILE} (now "
                            f"{now.get(name)!r}: {e}); results may differ")
    return warnings
