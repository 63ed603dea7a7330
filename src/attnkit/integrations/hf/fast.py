"""The plain attention call of a decoding step, without the per-call planning.

A decoding step of a dense model is the same problem at every layer and every step: q, k,
v, a scale, and a mask that allows every key (causal with one query, no padding). For it
:func:`attnkit.attention` validates the arguments, builds an ``AttentionCall`` and asks
every backend for its ``auto`` preference -- about 20 us of Python per call, 5-10% of a
small model's step. :func:`plain_attention` asks ``auto`` once per kind of call (device,
dtype, gradients, the :func:`~attnkit.backends.use_backends` policy and the registered
backends: everything ``auto`` can read from a call without a mask, bias, softcap or
sinks) and remembers the answer; when it is ``sdpa`` the call goes straight to torch's
``scaled_dot_product_attention``, which is all the ``sdpa`` backend does with such a call.

Not taken (None: the caller runs :func:`attnkit.attention`, which validates and refuses by
name): ``torch.compile`` tracing, an empty call, autocast, a scale that is not a positive finite
number, a registered backend that is not attnkit's own (its preference may depend on
the sizes), or ``auto`` choosing anything but ``sdpa``. q, k and v are validated as
:func:`attnkit.attention` validates them (:func:`attnkit.call.validate_qkv`, 2 us).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...backends.base import loaded_backends
from ...backends.selection import current_policy, resolve_backend
from ...call import make_call, validate_qkv

__all__ = ["plain_attention", "plain_choices"]

_CHOICE: dict[tuple, bool] = {}   # the kind of call -> does auto choose sdpa for it


def plain_choices() -> dict[tuple, bool]:
    """What :func:`plain_attention` remembered (for tests and inspection)."""
    return dict(_CHOICE)


def _auto_is_sdpa(q: Tensor, k: Tensor, v: Tensor, scale, backends: tuple) -> bool:
    if not all(type(be).__module__.startswith("attnkit.") for be in backends):
        return False
    call = make_call(q, k, v, scale=scale)            # validated once per kind of call
    return resolve_backend("auto", call).name == "sdpa"


def plain_attention(query: Tensor, key: Tensor, value: Tensor, scale) -> Tensor | None:
    """``out (B, H, Tq, Dv)`` of unmasked attention with no bias, softcap, sinks or
    dropout, run where ``backend="auto"`` runs it, or None when this path does not apply
    (see the module doc)."""
    if torch.compiler.is_compiling():
        return None                 # traced: attention() compiles
    validate_qkv(query, key, value, allow_empty=True)   # refused by name, as attention() does
    dev = query.device
    if not key.shape[2] or not query.numel() or torch.is_autocast_enabled(dev.type):
        return None                 # no key or no output (attention()'s zeros), autocast
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not (0 < scale < math.inf)):
        return None
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad
                                        or value.requires_grad)
    backends = tuple(loaded_backends())
    kind = (dev.type, query.dtype, grad, current_policy(), backends)
    sdpa = _CHOICE.get(kind)
    if sdpa is None:
        sdpa = _CHOICE[kind] = _auto_is_sdpa(query, key, value, scale, backends)
    if not sdpa:
        return None
    return F.scaled_dot_product_attention(query, key, value, scale=scale,
                                          enable_gqa=query.shape[1] != key.shape[1])
