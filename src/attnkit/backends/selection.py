"""Choosing a backend: the ``auto`` rule and :func:`use_backends` (in the spirit of torch's
``sdpa_kernel``).

``auto`` asks every registered backend that can serve the call for its
``auto_preference(call)`` and takes the highest priority (ties: registration order).
The built-ins' numbers, each with the reason for it, are one table,
:data:`attnkit.backends.base.AUTO_PRIORITY`; they give this rule:

0. on CUDA, softcap or a mask under half full -> ``triton`` (35), a mask too large to
   materialise -> ``triton`` (15); on CPU, forward, an opaque mask_mod at Tq*Tk >= 2^28
   -> ``flex`` (35);
1. softcap, a sparse pattern under half its pairs (run as its pieces, at its pair cost),
   or a mask whose block map is under half non-empty -> ``tiled`` (30): it skips empty
   tiles and has a backward; SDPA cannot skip and has no softcap;
2. no mask or ``causal()`` with Tq == Tk, and no bias -> ``sdpa`` (20);
3. other masks/biases whose dense form needs <= 256 MiB -> ``sdpa`` (20);
4. otherwise -> ``tiled`` (10 for a mask over that budget; 5, the fallback, when
   ``use_backends`` leaves no better one).

Under ``torch.compile`` ``tiled`` (which plans its tiles in Python: a graph break) is
chosen only when a dense form would exceed the budget; what SDPA cannot serve (softcap,
sinks) goes to ``reference`` (1), which traces into the graph.

A registered third-party backend takes part by implementing ``auto_preference``.

``with attnkit.use_backends("tiled", "sdpa"):`` restricts what ``auto`` may choose inside
the block; ``use_backends("ring", override=True)`` makes every call inside the block,
whatever backend it names, run on that one backend (context parallelism uses it).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from ..call import AttentionCall
from ..core.errors import UnsupportedCall
from .base import (LAZY_BACKENDS, Backend, available_backends, get_backend, loaded_backends,
                   refusal)

__all__ = ["select_backend", "resolve_backend", "use_backends", "current_policy"]

# lazily registered backends that ``auto`` loads to consider them for a call
_AUTO_LAZY = {"triton": lambda call: call.device.type == "cuda"}


@dataclass(frozen=True)
class Policy:
    names: tuple[str, ...] | None = None   # None: every registered backend
    override: bool = False


_state = threading.local()
_NO_POLICY = Policy()        # (frozen: one shared instance, so the common case builds nothing)


def current_policy() -> Policy:
    return getattr(_state, "policy", None) or _NO_POLICY


@contextlib.contextmanager
def use_backends(*names: str, override: bool = False):
    """Within the block, ``backend="auto"`` chooses only among ``names``; with
    ``override=True`` (one name) every attention call runs on that backend, whatever
    backend it names (a call it cannot serve raises :class:`UnsupportedCall`)."""
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"use_backends: expected one or more backend names, got {names!r}")
    for n in names:
        if n == "auto" or n not in available_backends():
            raise ValueError(f"use_backends: expected names from {available_backends()}, "
                             f"got {n!r}")
    if override and len(names) != 1:
        raise ValueError(f"use_backends: override=True takes exactly one backend, got {names}")
    old = getattr(_state, "policy", None)
    _state.policy = Policy(tuple(names), bool(override))
    try:
        yield _state.policy
    finally:
        _state.policy = old


def _candidates(call: AttentionCall, policy: Policy) -> list[Backend]:
    if policy.names is not None:
        return [get_backend(n) for n in policy.names]
    for name, wanted in _AUTO_LAZY.items():
        if wanted(call) and name in LAZY_BACKENDS:
            try:
                get_backend(name)
            except ValueError:
                pass  # its package is not installed: not a candidate
    return loaded_backends()


def select_backend(call: AttentionCall) -> tuple[str, str]:
    """The backend ``auto`` picks for ``call`` and the reason (see the module doc)."""
    policy = current_policy()
    best, why_not = None, []
    for be in _candidates(call, policy):
        pref = be.auto_preference(call)
        if pref is None:
            if policy.names is None:
                continue
            pref = (0.0, f"allowed by use_backends{policy.names}")
        reason = refusal(be, call)
        if reason:
            why_not.append(f"{be.name}: {reason}")
            continue
        if best is None or pref[0] > best[0]:
            best = (pref[0], be.name, pref[1])
    if best is None:
        raise UnsupportedCall("backend 'auto': no backend can serve this call"
                              + (f" ({'; '.join(why_not)})" if why_not else ""))
    _, name, reason = best
    if call.mask is not None and call.mask.opaque:
        reason += ("; the mask is an opaque mask_mod: its tiles were classified by "
                   "evaluating it densely (O(Tq*Tk))")
    return name, reason


def resolve_backend(backend: str, call: AttentionCall) -> Backend:
    """The backend that serves ``call`` for a requested name (``"auto"`` or a registered
    one) under the current :func:`use_backends` policy; raises UnsupportedCall with the
    reason when a named backend cannot serve it."""
    policy = current_policy()
    if policy.override:
        backend = policy.names[0]
    if backend == "auto":
        return get_backend(select_backend(call)[0])
    be = get_backend(backend)
    why = refusal(be, call)
    if why:
        raise UnsupportedCall(f"backend {backend!r} cannot serve this call: {why}")
    return be
