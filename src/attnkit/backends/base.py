"""The backend contract and the registry.

Every backend receives one validated :class:`~attnkit.call.AttentionCall` and either
serves it exactly or says why it cannot (``unsupported`` returns a reason). ``attention``
never switches algorithm silently: a backend asked for by name that cannot serve a call
raises :class:`~attnkit.core.errors.UnsupportedCall` with that reason.

A backend implements:

======================================  =================================================
``name``, ``description``               registry key, one line for ``attnkit backends``
``unsupported(call) -> str | None``     None if it serves ``call`` exactly, else why not
``forward(call) -> Tensor``             ``(B, H, Tq, Dv)`` in q's dtype, differentiable
``forward_with_weights(call)``          optional: ``(out, weights)``; default: forward,
                                        then the weights recomputed by the reference math
``serves_sinks``                        True if it serves ``call.sinks`` (default False:
                                        such a call is refused by name)
``auto_preference(call)``               optional: ``(priority, reason)`` if ``auto`` may
                                        pick it for ``call`` (highest priority wins), or
                                        None (default: never picked automatically)
======================================  =================================================
"""
from __future__ import annotations

import importlib

from torch import Tensor

from ..call import AttentionCall
from ..kernels.reference import attention_weights

__all__ = ["Backend", "register_backend", "unregister_backend", "get_backend",
           "available_backends", "LAZY_BACKENDS", "AUTO_PRIORITY", "auto_priority", "refusal"]


class Backend:
    """Base class. Subclasses set ``name`` and ``description`` and implement
    ``unsupported`` and ``forward`` (see the module doc)."""

    name: str = ""
    description: str = ""
    serves_sinks: bool = False

    def unsupported(self, call: AttentionCall) -> str | None:
        """None if this backend can serve ``call`` exactly, else the reason it cannot."""
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        """Output ``(B, H, Tq, Dv)`` in the dtype of q; differentiable w.r.t. q, k, v."""
        raise NotImplementedError

    def forward_with_weights(self, call: AttentionCall) -> tuple[Tensor, Tensor]:
        """Output and weights ``(B, H, Tq, Tk)``. Default: forward, then the weights
        recomputed by the reference math (for backends that never form them)."""
        return self.forward(call), attention_weights(call).to(call.dtype)

    def auto_preference(self, call: AttentionCall) -> tuple[float, str] | None:
        """``(priority, reason)`` when ``backend="auto"`` may choose this backend for
        ``call`` (the highest priority among the backends that can serve it wins), or
        None. The built-ins take their numbers from :data:`AUTO_PRIORITY`."""
        return None

    def __repr__(self):
        return f"<attnkit backend {self.name!r}>"


# ``auto``'s preferences, in one table: rule -> (priority, why this number). The highest
# priority among the backends that can serve a call wins (ties: registration order).
AUTO_PRIORITY = {
    "flex:opaque-cpu": (35.0, "above tiled's 30: forward on CPU, an opaque mask_mod at "
                              "Tq*Tk >= 2^28, where flex measured 1.10x tiled"),
    "triton:skip": (35.0, "above tiled's 30: softcap or a mask under half full, the same "
                          "tile skipping as tiled in compiled GPU kernels (not yet measured)"),
    "tiled:skip": (30.0, "above sdpa's 20: softcap (SDPA cannot apply it), a sparse pattern "
                         "under half its pairs (tiled runs its pieces at the pair cost) or a "
                         "mask under half full (SDPA computes every tile, tiled skips the empty "
                         "ones)"),
    "sdpa": (20.0, "torch's fused kernels: no mask, causal, or a mask/bias whose dense form "
                   "fits the 256 MiB budget"),
    "triton:large": (15.0, "above tiled's 10: a mask/bias too large to materialise, on the GPU "
                           "(not yet measured)"),
    "tiled:large": (10.0, "a mask/bias over SDPA's dense budget: tiled needs O(T*D)"),
    "tiled": (5.0, "the fallback (when use_backends leaves no better one): any call, O(T*D)"),
}


def auto_priority(rule: str) -> float:
    """The priority of one rule of :data:`AUTO_PRIORITY`."""
    return AUTO_PRIORITY[rule][0]


_REGISTRY: dict[str, Backend] = {}
# backends registered by importing a module on first use (their import has a cost or
# needs an optional package): name -> module
LAZY_BACKENDS = {"ring": "attnkit.distributed.backend", "triton": "attnkit.backends.triton"}


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add a backend to the registry under ``backend.name``."""
    if not isinstance(backend, Backend) or not backend.name:
        raise TypeError(f"register_backend: expected a named Backend instance, got {backend!r}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"register_backend: a backend named {backend.name!r} is already "
                         "registered (pass replace=True to override)")
    if backend.name == "auto":
        raise ValueError("register_backend: 'auto' is reserved for backend selection")
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> Backend:
    """Remove a backend from the registry (returns it)."""
    if name not in _REGISTRY:
        raise ValueError(f"unregister_backend: no backend named {name!r}")
    return _REGISTRY.pop(name)


def get_backend(name: str) -> Backend:
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(name).__name__}")
    if name not in _REGISTRY and name in LAZY_BACKENDS:
        try:
            importlib.import_module(LAZY_BACKENDS[name])
        except ImportError as e:
            raise ValueError(f"backend: {name!r} needs a package that is not installed ({e})") \
                from None
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend: expected one of {['auto'] + available_backends()}, "
                         f"got {name!r}") from None


def available_backends() -> list[str]:
    """Registered backends, then the lazily registered ones not imported yet."""
    return list(_REGISTRY) + [n for n in LAZY_BACKENDS if n not in _REGISTRY]


def loaded_backends() -> list[Backend]:
    """The backends registered so far (those ``auto`` considers), in registration order."""
    return list(_REGISTRY.values())


def refusal(be: Backend, call: AttentionCall) -> str | None:
    """Why ``be`` cannot serve ``call`` (its own ``unsupported``, or sinks it does not
    serve), or None."""
    if call.sinks is not None and not be.serves_sinks:
        return ("no learned sinks (s_aux) here: 'reference' and 'tiled' serve them "
                "(they need the row log-sum-exp)")
    return be.unsupported(call)
