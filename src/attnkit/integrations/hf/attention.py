"""The attention function transformers calls for ``attn_implementation="attnkit[...]"``
(``AttentionInterface``): every attention layer of the model runs through
:func:`attnkit.attention` (or :func:`attnkit.linear_attention` for a linear variant).

Arguments as transformers passes them: ``query (B, H, Tq, D)``, ``key/value (B, Hkv, Tk,
D/Dv)`` (GQA: never repeated), ``attention_mask`` (the attnkit spec our mask function
made, or a tensor from a model that builds its own), ``scaling``, ``dropout``, and per
model ``softcap`` (Gemma-2), ``position_bias`` (T5, added as a bias), ``s_aux`` (GPT-OSS's
learned sinks), ``sliding_window`` (already in the mask); every other keyword is served
or refused by name (the table in :mod:`.kwargs`). Returns ``(out (B, Tq, H, Dv), weights
(B, H, Tq, Tk) or None)``; weights, when asked for, are the ones the output is computed
from, in the autograd graph (:func:`weights_output`), as in eager.
"""
from __future__ import annotations

import contextlib
import functools
import threading

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import masks as M
from ...call import autocast_inputs, make_call, sees_every_key
from ...engine.functional import attention
from ...engine.variants import pool_heads
from ...kernels.reference import attend, attention_weights
from ...linear import GivenFeatures, linear_attention, make_feature_map
from ...masks import MaskSpec
from ...masks.spec import AndMask
from ...masks.tensor import KeyPadding
from . import learned
from .mask_view import as_spec
from .cache import full_key_length, kept_mask, linear_state_layer, longformer_sizes
from .calls import collecting_linear, note_call, note_linear, own_implementation, recording
from .fast import plain_attention
from .heads import edit_heads
from .kwargs import check_kwargs
from .names import Implementation, parse_implementation

__all__ = ["attnkit_attention_forward", "weights_for", "WeightRequest", "call_mask", "variant_mask"]

_state = threading.local()


class WeightRequest:
    """Which layers (``layer_idx``) and heads return weights under ``output_attentions``."""

    def __init__(self, layers=None, heads=None):
        self.layers = None if layers is None else {int(i) for i in layers}
        self.heads = None if heads is None else sorted({int(h) for h in heads})

    def wants(self, module) -> bool:
        """A module without a ``layer_idx`` (some vision encoders) is always computed."""
        idx = getattr(module, "layer_idx", None)
        return self.layers is None or idx is None or idx in self.layers


@contextlib.contextmanager
def weights_for(layers=None, heads=None):
    """Within the block, ``output_attentions=True`` computes weights only for these
    layers (the attention modules' ``layer_idx``) and heads (the others are zeros):
    weights are recomputed only where asked. The other layers return an empty
    ``(B, H, 0, Tk)`` tensor, so ``outputs.attentions[i]`` is still layer i."""
    old = getattr(_state, "request", None)
    _state.request = WeightRequest(layers, heads)
    try:
        yield _state.request
    finally:
        _state.request = old


def _find_collector():
    """transformers' context variable of the outputs being captured, or None."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return None
    return _active_collector


_COLLECTOR: list = []   # _find_collector()'s answer, kept (read only outside torch.compile,
#                        whose guards on a filled-in list would recompile)


def _collecting_attentions() -> bool:
    """Is transformers collecting attention weights for this forward (``output_attentions``
    of a model whose outputs are captured by hooks; some models do not pass the flag on)?"""
    if torch.compiler.is_compiling():
        var = _find_collector()
    else:
        if not _COLLECTOR:
            _COLLECTOR.append(_find_collector())
        var = _COLLECTOR[0]
    try:
        collected = None if var is None else var.get()
    except LookupError:
        return False
    return bool(collected) and any(k.endswith("attentions") for k in collected)


def config_attr(cfg, name: str, default=None):
    """``getattr(cfg, name, default)`` for an attribute transformers' config neither renames
    (``attribute_map``) nor holds per layer: read past ``PreTrainedConfig.__getattribute__``
    and its heterogeneity hook (a few us each, twice per layer and step). Plain getattr
    while torch.compile traces."""
    if torch.compiler.is_compiling():
        return getattr(cfg, name, default)
    field = _STORED_IN.get(name)
    if field is not None:       # a property returning this field: read it from the instance
        try:
            return object.__getattribute__(cfg, "__dict__")[field]
        except (AttributeError, KeyError):
            pass
    try:
        return object.__getattribute__(cfg, name)
    except AttributeError:
        return default


# transformers' config properties that return a plain instance field (5.4 .. 5.25); a
# test checks each against getattr on every version CI runs.
_STORED_IN = {"_attn_implementation": "_attn_implementation_internal",
              "output_attentions": "_output_attentions"}


def _wants_weights(module, kwargs) -> tuple[bool, bool]:
    """(weights asked for at all, and for this layer)."""
    cfg = getattr(module, "config", None)
    asked = bool(kwargs.get("output_attentions") or config_attr(cfg, "output_attentions", False)
                 or _collecting_attentions())
    req = getattr(_state, "request", None)
    return asked, asked and (req is None or req.wants(module))


def call_mask(attention_mask, module, query: Tensor, key: Tensor, is_causal) -> MaskSpec | None:
    """The call's mask as a spec. None from transformers means: causal when the module is
    causal and Tq > 1 (SDPA's is_causal, top-left aligned as transformers relies on for a
    static-cache prefill), else no mask. An :class:`~.mask_view.HFMask` gives its spec
    (its dense form is never built here)."""
    attention_mask = as_spec(attention_mask)
    if isinstance(attention_mask, MaskSpec):   # full() (an unpadded encoder): no mask at all
        return None if attention_mask.band() == (-float("inf"), float("inf")) else attention_mask
    if isinstance(attention_mask, Tensor):
        return M.from_tensor(attention_mask, "attention_mask")
    if attention_mask is not None:
        raise TypeError(f"attention_mask: expected an attnkit mask spec, a tensor or None, got "
                        f"{type(attention_mask).__name__}")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    Tq, Tk = query.shape[2], key.shape[2]
    if not causal or Tq == 1:
        return None
    return M.causal() if Tq == Tk else M.Window(float("inf"), -(Tk - Tq))  # key j <= i


def variant_mask(impl: Implementation, module, spec, Tk: int):
    """The variant's pattern AND-ed onto the model's mask (causal decoders stay causal)."""
    v = impl.variant
    if v is None or not v.is_sparse:
        return spec
    if v.name == "longformer" and Tk <= longformer_sizes(v)[1]:
        return spec     # every key is a global token (a prompt shorter than the sinks): the
        #                 pattern allows every pair, the model's own mask is the whole mask
    cfg = getattr(module, "config", None)
    n = max(Tk, int(getattr(cfg, "max_position_embeddings", 0) or 0))  # BigBird: fixed n
    causal = bool(getattr(module, "is_causal", False))
    pattern = _pattern_spec(v, n, causal)
    return pattern if spec is None else spec & pattern


@functools.lru_cache(maxsize=64)
def _pattern_spec(v, n: int, causal: bool):
    """A variant's mask for n tokens, built once (n is the model's max positions: fixed)."""
    return v.pattern(n, causal).at(n)


def _linear_mask(spec) -> tuple[bool, Tensor | None] | None:
    """(causal, keep (B, Tk) or None) of a mask linear attention serves -- none, causal,
    key padding, or an AND of them -- else None."""
    if spec is None:
        return False, None
    if isinstance(spec, AndMask):
        a, b = _linear_mask(spec.parts[0]), _linear_mask(spec.parts[1])
        if a is None or b is None:
            return None
        keep = a[1] if b[1] is None else b[1] if a[1] is None else a[1] & b[1]
        return a[0] or b[0], keep
    if isinstance(spec, KeyPadding):
        return False, spec.keep
    if spec.tensors():
        return None
    if spec.band() == (-float("inf"), float("inf")):
        return False, None
    return (True, None) if spec.is_causal else None


def _linear(impl, module, query, key, value, spec, dropout, want, softcap=None,
            position_bias=None, s_aux=None):
    served = _linear_mask(spec)
    why = ("output_attentions: linear attention never forms attention weights" if want
           else "s_aux: linear attention has no softmax to add a sink column to"
           if s_aux is not None
           else "softcap: linear attention has no scores to cap" if softcap
           else "position_bias: linear attention has no scores to add a bias to"
           if position_bias is not None
           else None if served is not None
           else f"attention_mask: linear attention serves no mask, a causal one or key "
           f"padding, got {spec!r}")
    if why:
        raise ValueError(f"attn_implementation {impl.name!r}: {why}")
    causal, keep = served
    layer = linear_state_layer(key)      # a bounded cache: continue from its state
    if impl.variant.args[0] == "hedgehog":
        fm = learned.feature_map(module, impl.name, query)
        query, key, phi = fm.queries(query), fm.keys(key), GivenFeatures()  # (B, H, T, 2D)
    else:
        phi = impl.variant.feature_map(query.shape[-1])
    if layer is None and key.shape[2] != query.shape[2]:
        raise ValueError(f"attn_implementation {impl.name!r}: {query.shape[2]} queries on "
                         f"{key.shape[2]} cached keys; linear attention decodes from its "
                         "recurrent state (generate's default cache, attnkit.hf.bounded_cache)")
    if keep is not None and keep.shape[-1] != key.shape[2]:
        keep = keep[:, -key.shape[2]:]   # the state holds the earlier keys (B, Tk_new)
    if layer is None and collecting_linear():   # adapt's weight matching (see .calls)
        features = make_feature_map(phi, query.shape[-1])     # the identity for hedgehog
        note_linear(module, features(query), features(key), causal, keep)
    if layer is None:
        out = linear_attention(query, key, value, phi, causal=causal, key_padding=keep)
    else:
        out, state = linear_attention(query, key, value, phi, causal=True, state=layer.state,
                                      return_state=True, key_padding=keep)
        layer.advance(state)
    # Dropout in training: there are no weights to drop, so the output is dropped (the
    # model's attention dropout rate, on the (B, H, T, Dv) mixture of values).
    return F.dropout(out, float(dropout)) if dropout else out


def _head_weights(w: Tensor, heads) -> Tensor:
    if heads is None:
        return w
    out = torch.zeros_like(w)
    out[:, heads] = w[:, heads]
    return out


def weights_output(query, key, value, **kw) -> tuple[Tensor, Tensor]:
    """``(out, weights)`` with the output computed from the returned weights (after
    dropout, as eager returns them): ``out = weights @ v``, both in the autograd graph, so
    a gradient reaching the weights (attention x gradient attribution, transformers'
    ``retain_grad`` test) is eager's. The weights are the reference math's (fp32); under
    autocast the inputs are cast as :func:`attnkit.attention` casts them."""
    q, k, v, autocast_device = autocast_inputs(query, key, value)
    call = make_call(q, k, v, allow_empty=True, **kw)
    if call.empty:
        return attention(query, key, value, return_weights=True, **kw)
    off = (torch.autocast(autocast_device, enabled=False) if autocast_device is not None
           else contextlib.nullcontext())
    with off:
        w = attention_weights(call)                              # (B, H, Tq, Tk), fp32
        if call.dropout_p > 0:
            w = torch.nn.functional.dropout(w, call.dropout_p, training=True)
        out = attend(dataclasses.replace(call, dropout_p=0.0), w)  # (B, H, Tq, Dv)
    return out, w.to(call.dtype)


def attnkit_attention_forward(module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask=None, dropout: float = 0.0, scaling=None,
                              softcap=None, is_causal=None, position_bias=None, s_aux=None,
                              **kwargs):
    """transformers' attention interface, served by attnkit (see the module doc)."""
    impl = parse_implementation(own_implementation(module)     # a layer's own name first
                                or config_attr(module.config, "_attn_implementation"))
    check_kwargs(impl.name, kwargs)
    if recording():                    # calls.record(): a tool keeps the call to rerun it
        note_call(module, query, key, value, attention_mask,
                  dict(kwargs, dropout=dropout, scaling=scaling, softcap=softcap,
                       is_causal=is_causal, position_bias=position_bias, s_aux=s_aux))
    asked, want = _wants_weights(module, kwargs)
    spec = call_mask(attention_mask, module, query, key, is_causal)
    if (impl.variant is None and impl.backend == "auto" and not asked and not dropout
            and position_bias is None and softcap is None and s_aux is None
            and (spec is None or sees_every_key(spec, query.shape[2], key.shape[2]))):
        out = plain_attention(query, key, value, scaling)     # (B, H, Tq, Dv) or None
        if out is not None:      # a decoding step of a dense model (see .fast)
            return edit_heads(module, out.transpose(1, 2).contiguous()), None
    if impl.variant is not None and impl.variant.is_linear:
        out, w = _linear(impl, module, query, key, value, spec, dropout, want, softcap,
                         position_bias, s_aux), None
    else:
        spec = variant_mask(impl, module, spec, full_key_length(key))
        spec = kept_mask(spec, key, query.shape[2], query.device)   # a sinks cache's columns
        if impl.variant is not None and impl.variant.is_gqa:  # K/V heads mean-pooled
            n = impl.variant.args[0]
            key, value = pool_heads(key, n), pool_heads(value, n)      # (B, n, Tk, D)
        kw = dict(mask=spec, bias=position_bias, scale=scaling, softcap=softcap,
                  dropout_p=float(dropout or 0.0), sinks=s_aux)
        if want:
            out, w = weights_output(query, key, value, **kw)
        else:
            out, w = attention(query, key, value, backend=impl.backend, **kw), None
        if w is not None:
            req = getattr(_state, "request", None)
            w = _head_weights(w, None if req is None else req.heads)
    if asked and not want:  # not chosen by weights_for: keep the layer's slot, no cost
        w = out.new_zeros(out.shape[0], out.shape[1], 0, key.shape[2])
    return edit_heads(module, out.transpose(1, 2).contiguous()), w   # (B, Tq, H, Dv)
