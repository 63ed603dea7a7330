"""Per-layer implementations and a record of the attention calls a model makes.

* A module may carry its own attnkit implementation name (attribute :data:`ATTR`, set
  with :func:`set_implementation`); :func:`attnkit_attention_forward` serves it with that
  name instead of the model's ``config._attn_implementation`` (which must be an attnkit
  one for transformers to call attnkit at all). A variant in some layers only:
  the model set to ``"attnkit"``, the chosen modules to ``"attnkit:<variant>"``.
* Within :func:`record`, the attention function notes every call it serves
  (:class:`Call`: the module, ``q (B, H, Tq, D)`` and ``k/v (B, Hkv, Tk, D)`` after RoPE,
  the mask and the keyword arguments, each by the name the function binds it to), so a
  tool can run a layer's attention operation again on q/k/v of its choice:
  ``attnkit_attention_forward(c.module, q, k, v, c.attention_mask, **c.args)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading

from torch import Tensor

__all__ = ["ATTR", "implementation_of", "set_implementation", "Call", "record", "recording",
           "note_call"]

ATTR = "attnkit_implementation"
_state = threading.local()


def own_implementation(module) -> str | None:
    """``module``'s own implementation name (:data:`ATTR`), or None (the model's)."""
    return vars(module).get(ATTR)     # a plain attribute: no nn.Module.__getattr__ miss


def implementation_of(module) -> str:
    """The attnkit name ``module``'s attention runs: its own (:data:`ATTR`), else the
    model's."""
    return own_implementation(module) or module.config._attn_implementation


def set_implementation(module, name: str | None) -> None:
    """Give ``module`` its own implementation name (None: the model's again)."""
    if name is None:
        if ATTR in vars(module):
            delattr(module, ATTR)
    else:
        setattr(module, ATTR, name)


@dataclasses.dataclass
class Call:
    """One call of the attention function, as the model made it."""
    module: object
    query: Tensor             # (B, H, Tq, D) after RoPE
    key: Tensor               # (B, Hkv, Tk, D)
    value: Tensor             # (B, Hkv, Tk, Dv)
    attention_mask: object    # the attnkit spec (or tensor / None) the model passed
    args: dict                # dropout, scaling, softcap, is_causal, position_bias, ...


@contextlib.contextmanager
def record():
    """Within the block, every call of the attention function is appended to the list
    yielded, in call order."""
    old = getattr(_state, "calls", None)
    _state.calls = []
    try:
        yield _state.calls
    finally:
        _state.calls = old


def recording() -> bool:
    """Is a :func:`record` block open in this thread?"""
    return _state.__dict__.get("calls") is not None


def note_call(module, query, key, value, attention_mask, args: dict) -> None:
    """Called by the attention function inside :func:`record` (``args`` by name)."""
    _state.calls.append(Call(module, query, key, value, attention_mask, args))
