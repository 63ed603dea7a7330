"""KV caches that hold only what an attnkit variant reads, as transformers ``Cache`` layers.

``generate`` builds one by default for a decoder running ``attnkit:...:VARIANT`` (the hook
:func:`install` adds to ``GenerationMixin._prepare_cache_for_generation`` when
:func:`attnkit.hf.register` runs; a cache the caller passes, a quantized cache
and encoder-decoders keep transformers' own). Per layer:

* ``window:W``: transformers' ``DynamicSlidingWindowLayer(W + 1)``, the last W keys (a
  query at p reads p-W..p);
* ``longformer:W:G`` (causal: G sinks + a window of W, StreamingLLM):
  :class:`.cache_layers.SinkWindowLayer`, the first G keys and the last W (static:
  :class:`.cache_layers.StaticSinkWindowLayer`, G + W + 1 fixed slots);
* ``linear:F``: :class:`.cache_layers.LinearStateLayer`, the recurrent state S (F x Dv)
  and z (F) per KV head; a decoding step is O(1) in the context;
* anything else: transformers' default (every key).

Every layer holds (B, Hkv, ., D): only the KV heads, never repeated per query head.

Positions: HF models cache keys *after* RoPE, so a kept key keeps its original position
and the outputs are exactly those of the same variant over a full cache (tested: greedy
tokens equal). ``bounded_cache(model, reposition=True)`` re-positions the sinks instead,
as StreamingLLM does: each decoding step rotates a copy of the G sink keys so that they sit
just before the window (RoPE models with fixed frequencies; others refused by name).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ... import masks as M
from .cache_marks import KEPT, STATE
from .names import parse_implementation

__all__ = ["bounded_cache", "static_bounded_cache", "cache_bytes", "install",
           "cache_plan", "longformer_sizes", "kept_mask", "full_key_length", "linear_state_layer", "check_static"]



def _tf():
    from transformers import cache_utils
    return cache_utils


def longformer_sizes(v) -> tuple[int, int]:
    """(W, G) of a ``longformer:W[:G]`` variant: the window and the global (sink) tokens."""
    return int(v.args[0]), int(v.args[1]) if len(v.args) > 1 else 1


def cache_plan(config, implementation: str | None = None) -> list[tuple[str, dict]] | None:
    """Per decoder layer, the bounded layer kind (``"window"``, ``"sinks"``, ``"linear"``)
    and its arguments for ``config``'s attn implementation, or None when the
    variant reads every key (dense, BigBird...) or the model has non-attention layers. Raises ValueError for a variant whose
    bounded cache cannot serve the model (encoder-decoder, sinks larger than the window)."""
    impl = parse_implementation(implementation or config._attn_implementation)
    v = impl.variant
    bounded = v is not None and (v.name in ("window", "longformer") or v.is_linear)
    if not bounded:
        return None
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"model: {impl.name!r} cannot serve an encoder-decoder with a bounded "
                         "cache: its cross-attention reads every encoder key (use the full "
                         "cache: generate without a cache argument keeps it)")
    if v.name == "longformer":
        W, G = longformer_sizes(v)
        if G > W:
            raise ValueError(f"variant {v.text!r}: sinks G={G} larger than the window W={W}; "
                             "expected G <= W (StreamingLLM keeps a few sinks and a long window)")
    text = config.get_text_config(decoder=True)
    types, kwargs = _tf().get_layer_types_and_kwargs(text)
    if any(t not in ("full_attention", "sliding_attention", "chunked_attention") for t in types):
        return None                             # hybrid models (SSM, shared KV): theirs
    own = (("linear", {}) if v.is_linear else ("window", {"sliding_window": v.args[0] + 1})
           if v.name == "window" else ("sinks", {"sinks": G, "window": W}))
    plan = []
    for kw in kwargs:
        S = kw.get("sliding_window")            # the model's own window (keys incl. the query)
        tighter = S is not None and own[0] != "linear" and S <= (W + 1 if own[0] == "sinks"
                                                                 else own[1]["sliding_window"])
        plan.append(("window", {"sliding_window": S}) if tighter else own)
    if any(p != plan[0] for p in plan):   # one layout for every layer: transformers sizes
        plan = [own] * len(plan)          # the masks of all layers from one of them
    return plan


def bounded_cache(model_or_config, implementation: str | None = None, reposition: bool = False):
    """A ``DynamicCache`` whose layers keep only what the variant reads (see the module doc);
    ValueError when the variant reads every key or cannot serve the model. ``reposition``:
    sinks re-positioned just before the window (StreamingLLM; a RoPE model, not a config)."""
    config = getattr(model_or_config, "config", model_or_config)
    plan = cache_plan(config, implementation)
    name = implementation or config._attn_implementation
    if plan is None:
        raise ValueError(f"attn_implementation {name!r}: this variant reads every key (or the "
                         "model has layers other than attention); a bounded cache would drop "
                         "keys it needs (use DynamicCache)")
    from .cache_layers import LinearStateLayer, SinkWindowLayer, rope_frequencies
    inv_freq = None
    if reposition:
        if not any(kind == "sinks" for kind, _ in plan):
            raise ValueError(f"reposition=True: {name!r} keeps no sink tokens; expected a "
                             "longformer:W:G (sinks + window) variant")
        if model_or_config is config:
            raise ValueError("reposition=True: expected the model (its RoPE frequencies), "
                             "got a config")
        inv_freq = rope_frequencies(model_or_config)
    cu = _tf()
    make = {"window": lambda kw: cu.DynamicSlidingWindowLayer(**kw),
            "sinks": lambda kw: SinkWindowLayer(**kw, inv_freq=inv_freq),
            "linear": lambda kw: LinearStateLayer()}
    cache = cu.DynamicCache()
    cache.layers = [make[kind](kw) for kind, kw in plan]
    cache.layer_class_to_replicate = None
    return cache


def static_bounded_cache(model_or_config, static):
    """The static (compilable) form of :func:`bounded_cache` for ``generate(...,
    cache_implementation="static")``, sized as transformers sized ``static`` (a
    ``StaticCache``): ``window:W`` -> transformers' ``StaticSlidingWindowLayer`` of W + 1
    keys; ``longformer:W:G`` -> :class:`.cache_layers.StaticSinkWindowLayer` of G + W + 1.
    ValueError for linear attention (a recurrent state, not keys) and dense variants."""
    config = getattr(model_or_config, "config", model_or_config)
    plan = cache_plan(config)
    name = config._attn_implementation
    other = sorted({kind for kind, _ in plan or []} - {"window", "sinks"})
    if plan is None or other:
        why = ("linear attention decodes from its recurrent state, not from a static buffer "
               "of keys" if other else "it reads every key")
        raise ValueError(f"cache_implementation='static': no static bounded cache for "
                         f"{name!r}: {why}; generate without cache_implementation uses its "
                         "bounded cache")
    from .cache_layers import StaticSinkWindowLayer
    max_len = max(int(layer.max_cache_len) for layer in static.layers)
    cu = _tf()
    make = {"window": cu.StaticSlidingWindowLayer, "sinks": StaticSinkWindowLayer}
    cache = cu.StaticCache(config=config, max_cache_len=max_len)
    cache.layers = [make[kind](max_cache_len=max_len, **kw) for kind, kw in plan]
    return cache


def cache_bytes(cache) -> list[int]:
    """Bytes held per layer (keys + values, or the linear state)."""
    from .cache_layers import LinearStateLayer
    out = []
    for layer in cache.layers:
        if isinstance(layer, LinearStateLayer):
            st = layer.state
            out.append(0 if st is None else sum(t.nbytes for t in (st.S, st.z, st.m)))
        else:
            out.append(sum(t.nbytes for t in (layer.keys, layer.values) if t is not None))
    return out


def full_key_length(keys: Tensor) -> int:
    """Keys in the full cache (before a :class:`SinkWindowLayer` dropped some)."""
    return getattr(keys, KEPT, (0, keys.shape[2]))[1]


def kept_mask(spec, keys: Tensor, Tq: int, device) -> "M.MaskSpec | None":
    """``spec`` (made for the full key range) on the columns a :class:`SinkWindowLayer`
    kept: the first G and the last ``Tk - G``; the spec unchanged for any other keys."""
    kept = getattr(keys, KEPT, None)
    if kept is None or spec is None:
        return spec
    G, Tk_full = kept
    n_win, spec = keys.shape[2] - G, spec.resolve(Tq, Tk_full)
    parts = [spec.tile(0, Tq, 0, G, Tq=Tq, Tk=Tk_full, device=device),
             spec.tile(0, Tq, Tk_full - n_win, Tk_full, Tq=Tq, Tk=Tk_full, device=device)]
    Bm = max(p.shape[0] for p in parts)
    Hm = max(p.shape[1] for p in parts)
    keep = torch.cat([p.expand(Bm, Hm, Tq, p.shape[-1]) for p in parts], -1)  # (Bm,Hm,Tq,Tk)
    return None if bool(keep.all()) else M.from_tensor(keep, "attention_mask")


def linear_state_layer(keys: Tensor):
    """The :class:`LinearStateLayer` that returned these keys, or None."""
    return getattr(keys, STATE, None)


def check_static(cache, needed: int) -> None:
    """ValueError when a static cache's full-attention layers hold fewer than ``needed``
    positions (the prompt and the new tokens; transformers fails mid-way with IndexError)."""
    cu = _tf()
    inner = getattr(cache, "self_attention_cache", cache)   # an EncoderDecoderCache
    for layer in getattr(inner, "layers", []):
        if type(layer) is cu.StaticLayer and layer.max_cache_len < needed:
            raise ValueError(f"cache: a static cache of max_cache_len={layer.max_cache_len} "
                             f"is too short for this generation: expected >= {needed} positions "
                             "(prompt + max_new_tokens - 1)")


_INSTALLED = False


def install() -> None:
    """Make ``generate`` build :func:`bounded_cache` by default for attnkit variants that
    read only part of the keys (idempotent; other models are untouched)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from transformers.generation.utils import GenerationMixin
    original = GenerationMixin._prepare_cache_for_generation

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        out = original(self, generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        impl = getattr(self.config, "_attn_implementation", None)
        if isinstance(impl, str) and impl.split(":")[0] == "attnkit":
            check_static(cache, generation_config.max_length - 1)
        kind = type(cache)
        if (kind in (_tf().DynamicCache, _tf().StaticCache)
                and not getattr(cache, "_is_user_defined", False)
                and not self.config.is_encoder_decoder and not cache.offloading
                and isinstance(impl, str) and impl.split(":")[0] == "attnkit"
                and cache_plan(self.config) is not None):
            model_kwargs["cache"] = (bounded_cache(self) if kind is _tf().DynamicCache
                                     else static_bounded_cache(self, cache))
            if generation_config.is_assistant:
                raise ValueError(f"attn_implementation {impl!r}: a bounded cache cannot serve an "
                                 "assistant model (it must roll back); pass cache=DynamicCache()")
        return out

    GenerationMixin._prepare_cache_for_generation = _prepare_cache_for_generation
    _INSTALLED = True
