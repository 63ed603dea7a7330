"""Per-head output edits inside transformers' attention function: ablate, mean-replace,
patch and record one head's output on any architecture served by attnkit -- no hooks, no
port. :func:`attnkit_attention_forward` hands its per-head output ``(B, Tq, H, Dv)``
(before the output projection) to :func:`edit_heads` just before it returns.

::

    with heads.record(model) as rec:                  # every attention call, in call order
        model(**batch)
    mods = rec.modules                                # the attention modules, call order
    with heads.edit({mods[3]: heads.HeadEdit.zero([1, 5], n_heads=12)}):
        model(**batch)                                # layer 3's heads 1 and 5 output 0

An edit replaces the chosen heads' output by ``value`` (0, a mean, another run's output)
where ``mask`` is True and may scale every head by ``scale`` (the head-mask gates of
Michel et al. 2019, for gradients). ``mask`` broadcasts to ``(B, Tq, H)``: a ``(B, 1, H)``
mask with a different head per batch row ablates H heads in one batched forward.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading

import torch
from torch import Tensor

__all__ = ["HeadEdit", "edit", "record", "Recorder", "edit_heads"]

_state = threading.local()
_ACTIVE = [0]   # edit/record blocks open in any thread (edit_heads returns at once when 0)
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _opened():
    with _ACTIVE_LOCK:
        _ACTIVE[0] += 1
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE[0] -= 1


@dataclasses.dataclass
class HeadEdit:
    """What to do to one attention module's per-head output ``out (B, Tq, H, Dv)``."""
    mask: Tensor | None = None        # bool, broadcasts to (B, Tq, H): heads to replace
    value: Tensor | float = 0.0       # broadcasts to (B, Tq, H, Dv): what replaces them
    scale: Tensor | None = None       # broadcasts to (B, 1, H): a gate on every head

    @staticmethod
    def zero(heads, n_heads: int) -> "HeadEdit":
        m = torch.zeros(1, 1, n_heads, dtype=torch.bool)
        m[..., list(heads)] = True
        return HeadEdit(mask=m)

    @staticmethod
    def replace(heads, n_heads: int, value: Tensor) -> "HeadEdit":
        """``value``: broadcasts to (B, Tq, H, Dv) (a mean ``(H, Dv)``, a run ``(B, Tq, H, Dv)``)."""
        e = HeadEdit.zero(heads, n_heads)
        e.value = value
        return e

    def apply(self, out: Tensor) -> Tensor:                               # (B, Tq, H, Dv)
        B, Tq, H, Dv = out.shape
        if self.mask is not None:
            m = self.mask.to(out.device)
            if m.dim() != 3 or m.shape[-1] != H or m.shape[0] not in (1, B) or \
                    m.shape[1] not in (1, Tq):
                raise ValueError(f"HeadEdit.mask: expected a bool tensor broadcasting to "
                                 f"(B, Tq, H) = {(B, Tq, H)}, got {tuple(m.shape)}")
            v = self.value
            v = v.to(out) if isinstance(v, Tensor) else out.new_tensor(float(v))
            if v.dim() and v.shape[-2:] != (H, Dv):
                raise ValueError(f"HeadEdit.value: expected (..., H, Dv) = (..., {H}, {Dv}), "
                                 f"got {tuple(v.shape)}")
            out = torch.where(m[..., None], v, out)
        if self.scale is not None:
            s = self.scale.to(out)
            out = out * s[..., None]                     # (H,) or (B, 1, H) -> per head
        return out


class Recorder:
    """The attention modules in the order of their calls, and each one's last per-head
    output ``(B, Tq, H, Dv)`` (detached unless ``keep_grad``)."""

    def __init__(self, keep_grad: bool = False):
        self.modules: list = []
        self.outputs: dict = {}
        self.keep_grad = keep_grad

    def __call__(self, module, out: Tensor) -> None:
        if module not in self.outputs:
            self.modules.append(module)
        self.outputs[module] = out if self.keep_grad else out.detach()


@contextlib.contextmanager
def edit(edits: dict):
    """Within the block, the attention modules named as keys apply their
    :class:`HeadEdit` to every call's per-head output (nested blocks: the inner wins per
    module)."""
    for k, e in edits.items():
        if not isinstance(e, HeadEdit):
            raise TypeError(f"edits: expected {{module: HeadEdit}}, got {type(e).__name__} for "
                            f"{type(k).__name__}")
    old = getattr(_state, "edits", None)
    _state.edits = {**(old or {}), **edits}
    try:
        with _opened():
            yield
    finally:
        _state.edits = old


@contextlib.contextmanager
def record(keep_grad: bool = False):
    """Within the block, record every attention module's per-head output (after the
    edits of :func:`edit`, so a patched run records the patched heads)."""
    old = getattr(_state, "recorder", None)
    _state.recorder = Recorder(keep_grad)
    try:
        with _opened():
            yield _state.recorder
    finally:
        _state.recorder = old


def edit_heads(module, out: Tensor) -> Tensor:
    """Called by the attention function with ``out (B, Tq, H, Dv)``; returns it edited."""
    if not _ACTIVE[0]:      # no edit or recording block open in any thread: nothing to read
        return out
    edits = getattr(_state, "edits", None)
    if edits:
        e = edits.get(module)
        if e is not None:
            out = e.apply(out)
    rec = getattr(_state, "recorder", None)
    if rec is not None:
        rec(module, out)
    return out
