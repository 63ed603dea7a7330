"""KV caches that hold only what an attnkit variant reads, as transformers ``Cache`` layers.

``generate`` builds one by default for a decoder running ``attnkit:...:VARIANT`` (the hook
:func:`install` adds to ``GenerationMixin._prepare_cache_for_generation`` when
:func:`attnkit.hf.register` runs; a cache the caller passes, a static or quantized cache,
and encoder-decoders keep transformers' own). Per layer:

=========================  ===========================================================
variant                    cache layer (B, Hkv, ., D): only the KV heads, never repeated
=========================  ===========================================================
``window:W``               transformers' ``DynamicSlidingWindowLayer(W + 1)``: the last
                           W keys (a query at p reads p-W..p)
``longformer:W:G``         :class:`SinkWindowLayer`: the first G keys (StreamingLLM's
(causal: G sinks + W)      attention sinks) and the last W
``linear:F``               :class:`LinearStateLayer`: the recurrent state S (F x Dv), z
                           (F) per KV head; a decoding step is O(1) in the context
anything else              transformers' default (every key)
=========================  ===========================================================

Positions: HF models cache keys *after* RoPE, so a kept key keeps its original position
(StreamingLLM re-positions keys inside the cache instead; that needs the keys before
RoPE and is not what these layers do). The outputs are therefore exactly those of the
same variant over a full cache (tested: greedy tokens equal).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ... import masks as M
from .names import parse_implementation

__all__ = ["SinkWindowLayer", "LinearStateLayer", "bounded_cache", "cache_bytes", "install",
           "cache_plan", "kept_mask", "full_key_length", "linear_state_layer", "check_static"]

_KEPT = "_attnkit_kept"      # on the keys a SinkWindowLayer returns: (G, Tk of the full cache)
_STATE = "_attnkit_state"    # on the keys a LinearStateLayer returns: the layer


def _tf():
    from transformers import cache_utils
    return cache_utils


def cache_plan(config, implementation: str | None = None) -> list[tuple[str, dict]] | None:
    """Per decoder layer, the bounded layer kind (``"window"``, ``"sinks"``, ``"linear"``)
    and its arguments for ``config``'s attn implementation, or None when the
    variant reads every key (dense, BigBird...) or the model has non-attention layers. Raises ValueError for a variant whose
    bounded cache cannot serve the model (encoder-decoder, sinks larger than the window)."""
    impl = parse_implementation(implementation or config._attn_implementation)
    v = impl.variant
    bounded = v is not None and (v.name in ("window", "longformer") or v.kind == "linear")
    if not bounded:
        return None
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"model: {impl.name!r} cannot serve an encoder-decoder with a bounded "
                         "cache: its cross-attention reads every encoder key (use the full "
                         "cache: generate without a cache argument keeps it)")
    if v.name == "longformer":
        W, G = v.args[0], (v.args[1] if len(v.args) > 1 else 1)
        if G > W:
            raise ValueError(f"variant {v.text!r}: sinks G={G} larger than the window W={W}; "
                             "expected G <= W (StreamingLLM keeps a few sinks and a long window)")
    text = config.get_text_config(decoder=True)
    types, kwargs = _tf().get_layer_types_and_kwargs(text)
    if any(t not in ("full_attention", "sliding_attention", "chunked_attention") for t in types):
        return None                             # hybrid models (SSM, shared KV): theirs
    own = (("linear", {}) if v.kind == "linear" else ("window", {"sliding_window": v.args[0] + 1})
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


def bounded_cache(model_or_config, implementation: str | None = None):
    """A ``DynamicCache`` whose layers keep only what the variant reads (see the module doc);
    ValueError when the variant reads every key or cannot serve the model."""
    config = getattr(model_or_config, "config", model_or_config)
    plan = cache_plan(config, implementation)
    if plan is None:
        name = implementation or config._attn_implementation
        raise ValueError(f"attn_implementation {name!r}: this variant reads every key (or the "
                         "model has layers other than attention); a bounded cache would drop "
                         "keys it needs (use DynamicCache)")
    cu = _tf()
    make = {"window": lambda kw: cu.DynamicSlidingWindowLayer(**kw),
            "sinks": lambda kw: SinkWindowLayer(**kw), "linear": lambda kw: LinearStateLayer()}
    cache = cu.DynamicCache()
    cache.layers = [make[kind](kw) for kind, kw in plan]
    cache.layer_class_to_replicate = None
    return cache


def cache_bytes(cache) -> list[int]:
    """Bytes held per layer (keys + values, or the linear state)."""
    out = []
    for layer in cache.layers:
        if isinstance(layer, LinearStateLayer):
            st = layer.state
            out.append(0 if st is None else sum(t.nbytes for t in (st.S, st.z, st.m)))
        else:
            out.append(sum(t.nbytes for t in (layer.keys, layer.values) if t is not None))
    return out


class SinkWindowLayer(_tf().DynamicLayer):
    """The first ``sinks`` keys and the last ``window`` keys (each query at p reads the sinks
    and p-window..p). The mask is built for the full key range (``get_mask_sizes``); the
    keys returned carry which columns they are (:func:`kept_mask`)."""

    is_croppable = False

    def __init__(self, sinks: int, window: int, **kwargs):
        super().__init__()
        self.sinks, self.window, self.cumulative_length = int(sinks), int(window), 0

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        evicted = self.cumulative_length > (self.keys.shape[-2] if self.keys.dim() == 4 else 0)
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)      # (B, Hkv, kept + Tq, D)
        values = torch.cat([self.values, value_states], dim=-2)
        G, W = self.sinks, self.window
        if keys.shape[-2] > G + W:
            self.keys = torch.cat([keys[:, :, :G], keys[:, :, -W:]], dim=-2)
            self.values = torch.cat([values[:, :, :G], values[:, :, -W:]], dim=-2)
        else:
            self.keys, self.values = keys, values
        if evicted:
            setattr(keys, _KEPT, (G, self.cumulative_length))
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sinks + self.window

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("crop: a sinks+window cache has dropped keys and cannot roll back")


def full_key_length(keys: Tensor) -> int:
    """Keys in the full cache (before a :class:`SinkWindowLayer` dropped some)."""
    return getattr(keys, _KEPT, (0, keys.shape[2]))[1]


def kept_mask(spec, keys: Tensor, Tq: int, device) -> "M.MaskSpec | None":
    """``spec`` (made for the full key range) on the columns a :class:`SinkWindowLayer`
    kept: the first G and the last ``Tk - G``; the spec unchanged for any other keys."""
    kept = getattr(keys, _KEPT, None)
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


class LinearStateLayer(_tf().DynamicLayer):
    """Causal linear attention's recurrent state (:class:`attnkit.linear.LinearAttentionState`:
    S (B, Hkv, F, Dv), z (B, Hkv, F)) instead of keys: ``update`` hands the new keys to the
    attention function, which continues from the state and stores the next one."""

    is_croppable = False

    def __init__(self, **kwargs):
        super().__init__()
        self.state, self.cumulative_length, self.pending = None, 0, False

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if self.pending:
            raise RuntimeError("linear attention cache: the attention function never read the "
                               "last keys (the model changes them between its cache and its "
                               "attention call); a recurrent state cannot serve this model")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        self.pending = True
        setattr(key_states, _STATE, self)
        return key_states, value_states

    def advance(self, state) -> None:
        """Called by the attention function with the state after the new keys."""
        self.state, self.pending = state, False

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def _map(self, fn) -> None:
        if self.state is not None:
            st = self.state
            self.state = type(st)(fn(st.S), fn(st.z), fn(st.m), st.feature_map, st.eps, st.t)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def reset(self) -> None:
        self.state, self.cumulative_length, self.pending = None, 0, False
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("crop: a recurrent linear-attention state cannot roll back")


def linear_state_layer(keys: Tensor):
    """The :class:`LinearStateLayer` that returned these keys, or None."""
    return getattr(keys, _STATE, None)


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
        if (type(cache) is _tf().DynamicCache and not getattr(cache, "_is_user_defined", False)
                and not self.config.is_encoder_decoder and not cache.offloading
                and isinstance(impl, str) and impl.split(":")[0] == "attnkit"
                and cache_plan(self.config) is not None):
            model_kwargs["cache"] = bounded_cache(self)
            if generation_config.is_assistant:
                raise ValueError(f"attn_implementation {impl!r}: a bounded cache cannot serve an "
                                 "assistant model (it must roll back); pass cache=DynamicCache()")
        return out

    GenerationMixin._prepare_cache_for_generation = _prepare_cache_for_generation
    _INSTALLED = True
