"""Checks before a model source reads a weight: the checkpoint's headers and the
``--backend`` name."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import UsageError

__all__ = ["read_checkpoint", "port_archs", "check_backend"]


def read_checkpoint(d: Path) -> tuple[dict, dict, dict]:
    """(config dict, {tensor: shape}, {tensor: file}) from headers only (the loader's
    readers, :mod:`attnkit.loading.files`; their errors as one ``--model`` line)."""
    from ..core.errors import CheckpointError
    from ..loading.files import Weights, read_config
    try:
        cfg, w = read_config(d), Weights(d)
        shapes = {k: w.shape(k) for k in w.names}
        where = {k: w.file(k) for k in w.names}
    except CheckpointError as e:
        raise UsageError(f"--model: {e}") from None
    if not shapes:
        raise UsageError(f"--model: {d}: the safetensors file(s) hold no tensors")
    return cfg, shapes, where


def port_archs() -> list[str]:
    from .. import loading
    archs = getattr(loading, "ARCHITECTURES", {}) or {}
    return sorted(k for k in archs if k[:1].isupper())


def check_backend(name: str) -> None:
    """``--backend``: a registered name that can serve plain and causal calls on the CPU
    (probed on tiny calls, before any heavy work)."""
    from .. import masks
    from ..backends import available_backends, get_backend
    from ..engine.functional import make_call
    if name == "auto":
        return
    names = available_backends()
    if name not in names:
        raise UsageError(f"--backend: expected one of {['auto'] + names}, got {name!r}")
    q = torch.zeros(1, 2, 4, 8)                                          # (B, H, T, D)
    for mask in (None, masks.causal()):
        why = get_backend(name).unsupported(make_call(q, q, q, mask=mask))
        if why:
            raise UsageError(f"--backend {name}: cannot serve inspect's calls on the CPU: "
                             f"{why}")
