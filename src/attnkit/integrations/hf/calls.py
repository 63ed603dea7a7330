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
* Within :func:`collect_linear`, the linear-attention path notes the features it
  multiplies and the mask it applies (:class:`LinearCall`), in the autograd graph, so a
  loss can compare the linear attention's normalised weights with softmax weights
  (``attnkit adapt``'s stage-1 weight matching).
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading

from torch import Tensor

__all__ = ["ATTR", "implementation_of", "set_implementation", "Call", "record", "recording",
           "note_call", "LinearCall", "collect_linear", "collecting_linear", "note_linear"]

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
def _thread_list(name: str):
    """A fresh list at ``_state.<name>`` for the block (this thread; nested blocks restore)."""
    old = getattr(_state, name, None)
    setattr(_state, name, [])
    try:
        yield getattr(_state, name)
    finally:
        setattr(_state, name, old)


@contextlib.contextmanager
def record():
    """Within the block, every call of the attention function is appended to the list
    yielded, in call order."""
    with _thread_list("calls") as calls:
        yield calls


def recording() -> bool:
    """Is a :func:`record` block open in this thread?"""
    return _state.__dict__.get("calls") is not None


def note_call(module, query, key, value, attention_mask, args: dict) -> None:
    """Called by the attention function inside :func:`record` (``args`` by name)."""
    _state.calls.append(Call(module, query, key, value, attention_mask, args))


@dataclasses.dataclass
class LinearCall:
    """One call served by linear attention, as :func:`collect_linear` keeps it: the
    features it multiplied (in the autograd graph) and the mask it applied."""
    module: object
    query_features: Tensor    # phi(q) (B, H, T, F)
    key_features: Tensor      # phi(k) (B, Hkv, T, F)
    causal: bool
    keep: Tensor | None       # (B, T) bool, True = a real key; None: every key


@contextlib.contextmanager
def collect_linear():
    """Within the block, every call the linear-attention path serves without a cache
    (self-attention over the whole input) appends a :class:`LinearCall` to the list
    yielded -- what ``attnkit adapt`` needs to match the linear attention's normalised
    weights ``phi(q) phi(k)^T / sum_j phi(q) phi(k_j)^T`` to a teacher's softmax weights.
    Computing the T x T weights is the caller's choice (and cost)."""
    with _thread_list("linear") as calls:
        yield calls


def collecting_linear() -> bool:
    """Is a :func:`collect_linear` block open in this thread?"""
    return _state.__dict__.get("linear") is not None


def note_linear(module, query_features, key_features, causal: bool, keep) -> None:
    """Called by the linear-attention path inside :func:`collect_linear`."""
    _state.linear.append(LinearCall(module, query_features, key_features, causal, keep))
