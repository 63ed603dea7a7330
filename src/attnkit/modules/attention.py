"""Multi-head attention (self or cross; MHA, GQA, MQA) over :func:`attnkit.attention`.

Every call goes through :func:`attnkit.attention`, so the backend (``reference``,
``sdpa``, ``flex``, ``tiled`` or ``auto``) and the mask pattern (any
:mod:`attnkit.masks` spec) are one argument each, also after construction via
:meth:`MultiHeadAttention.set_attention`.

Projection weights (``nn.Linear`` layout ``(out_features, in_features)``):

* separate (default): ``q_proj (H*D, d_model)``, ``k_proj (Hkv*D, d_model)``,
  ``v_proj (Hkv*D, d_model)``, ``o_proj (d_model, H*D)`` -- the Hugging Face
  Llama/BERT layout;
* fused (``fused=True``): one ``qkv_proj ((H + 2*Hkv)*D, d_model)`` whose rows are
  ``[q; k; v]`` -- GPT-2's ``c_attn`` (transposed). Self-attention does one matmul;
  cross-attention uses the q rows on ``x`` and the k/v rows on ``context``.

Heads: ``n_kv_heads=None`` is MHA, ``1 < n_kv_heads < n_heads`` GQA, ``1`` MQA; K/V
stay ``(B, Hkv, T, D)`` all the way into the kernel (never repeated per head).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import available_backends
from ..call.bias import alibi
from ..engine.functional import attention
from ..linear import linear_attention, make_feature_map
from ..masks import MaskSpec, as_mask, causal, key_padding
from .cache import KVCache, LinearStateCache, kept_keys
from .positional import RotaryEmbedding

__all__ = ["MultiHeadAttention", "key_padding_mask", "UNSET"]

UNSET = object()  # "leave as it is" for set_attention


def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    return v


def key_padding_mask(attention_mask: Tensor) -> MaskSpec:
    """A Hugging Face style ``attention_mask (B, Tk)`` as a spec: :func:`attnkit.masks.key_padding`."""
    return key_padding(attention_mask)


class MultiHeadAttention(nn.Module):
    """``forward(x, context=None, mask=None, cache=None, return_weights=False, positions=None)``.

    Args:
        d_model: model width. n_heads: query heads H. n_kv_heads: key/value heads
            (None = H). head_dim: D (default ``d_model // n_heads``).
        bias: biases on the projections. dropout: attention-weight dropout (training).
        pattern: a mask spec or sparse pattern applied to every call (e.g. ``causal()``,
            ``causal() & window(128)``); a per-call ``mask`` is AND-ed with it.
        positions: None, ``"rope"``, ``"alibi"`` or a :class:`RotaryEmbedding`
            (self-attention only).
        backend: passed to :func:`attnkit.attention`. fused: one qkv weight.

    ``set_attention(linear="elu" | "relu" | FeatureMap)`` replaces softmax attention by
    :func:`attnkit.linear_attention` (O(T)); it serves no mask or ``causal()`` only, and
    no weights, ALiBi or attention dropout (each refused with a reason); it decodes from
    a :class:`~attnkit.modules.LinearStateCache` (its recurrent state), not a KVCache.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *,
                 bias: bool = True, dropout: float = 0.0, pattern=None, positions=None,
                 backend: str = "auto", head_dim: int | None = None, fused: bool = False):
        super().__init__()
        d_model, n_heads = _pos_int("d_model", d_model), _pos_int("n_heads", n_heads)
        n_kv = n_heads if n_kv_heads is None else _pos_int("n_kv_heads", n_kv_heads)
        if n_heads % n_kv:
            raise ValueError(f"n_kv_heads: expected a divisor of n_heads={n_heads}, got {n_kv}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"n_heads: expected a divisor of d_model={d_model} (or pass "
                                 f"head_dim), got {n_heads}")
            head_dim = d_model // n_heads
        D = _pos_int("head_dim", head_dim)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv, D
        self.dropout, self.fused = float(dropout), bool(fused)
        if fused:
            self.qkv_proj = nn.Linear(d_model, (n_heads + 2 * n_kv) * D, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, n_heads * D, bias=bias)
            self.k_proj = nn.Linear(d_model, n_kv * D, bias=bias)
            self.v_proj = nn.Linear(d_model, n_kv * D, bias=bias)
        self.o_proj = nn.Linear(n_heads * D, d_model, bias=bias)

        self.rope: RotaryEmbedding | None = None
        self.alibi = None
        if isinstance(positions, RotaryEmbedding):
            if positions.head_dim != D:
                raise ValueError(f"positions: RotaryEmbedding head_dim {positions.head_dim} != "
                                 f"head_dim {D}")
            self.rope = positions
        elif positions == "rope":
            self.rope = RotaryEmbedding(D)
        elif positions == "alibi":
            self.alibi = alibi(n_heads)
        elif positions is not None:
            raise ValueError(f"positions: expected None, 'rope', 'alibi' or a RotaryEmbedding, "
                             f"got {positions!r}")
        self.pattern: MaskSpec | None = None
        self.backend = "auto"
        self.linear = None                      # a FeatureMap: linear attention instead
        self.set_attention(backend=backend, pattern=pattern)

    # -- configuration ------------------------------------------------------
    def set_attention(self, *, backend=UNSET, pattern=UNSET,
                      linear=UNSET) -> "MultiHeadAttention":
        """Switch the backend name, the pattern (None = no mask) and/or linear attention
        (a feature map: ``"elu"``, ``"relu"`` or a FeatureMap; None = softmax)."""
        if backend is not UNSET:
            if not isinstance(backend, str):
                raise TypeError(f"backend: expected a backend name (str), got "
                                f"{type(backend).__name__}")
            if backend != "auto" and backend not in available_backends():
                raise ValueError(f"backend: expected one of {['auto'] + available_backends()}, "
                                 f"got {backend!r}")
            self.backend = backend
        if pattern is not UNSET:
            self.pattern = as_mask(pattern, "pattern")
        if linear is not UNSET:
            self.linear = None if linear is None else make_feature_map(linear, self.head_dim)
        return self

    # -- projections --------------------------------------------------------
    def _heads(self, t: Tensor, n: int) -> Tensor:
        B, T, _ = t.shape
        return t.view(B, T, n, self.head_dim).transpose(1, 2)                # (B, n, T, D)

    def project_q(self, x: Tensor) -> Tensor:
        """``x (B, T, d_model)`` -> ``q (B, H, T, D)``."""
        if not self.fused:
            return self._heads(self.q_proj(x), self.n_heads)
        n = self.n_heads * self.head_dim
        b = None if self.qkv_proj.bias is None else self.qkv_proj.bias[:n]
        return self._heads(F.linear(x, self.qkv_proj.weight[:n], b), self.n_heads)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, T, d_model)`` -> ``k, v (B, Hkv, T, D)``."""
        if not self.fused:
            return (self._heads(self.k_proj(x), self.n_kv_heads),
                    self._heads(self.v_proj(x), self.n_kv_heads))
        n = self.n_heads * self.head_dim
        b = None if self.qkv_proj.bias is None else self.qkv_proj.bias[n:]
        k, v = F.linear(x, self.qkv_proj.weight[n:], b).chunk(2, dim=-1)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

    def _project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.fused:
            return (self.project_q(x),) + self.project_kv(x)
        nq, nkv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((nq, nkv, nkv), dim=-1)
        return (self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads),
                self._heads(v, self.n_kv_heads))

    # -- forward ------------------------------------------------------------
    def _check_input(self, name: str, t) -> None:
        if not isinstance(t, Tensor) or t.dim() != 3 or t.shape[-1] != self.d_model:
            raise ValueError(f"{name}: expected a tensor (B, T, d_model={self.d_model}), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")

    def forward(self, x: Tensor, context: Tensor | None = None, mask=None,
                cache: KVCache | None = None, return_weights: bool = False,
                positions: Tensor | None = None):
        """``x (B, Tq, d_model)``; ``context (B, Tk, d_model)`` for cross-attention.

        ``mask``: anything :func:`attnkit.attention` accepts (spec, bool or additive
        tensor), AND-ed with the pattern. ``cache``: a :class:`KVCache`; for
        self-attention new keys/values are appended (RoPE positions continue from
        ``cache.seen``; a bounded cache's kept keys are masked at their absolute
        positions, and a pattern that could read a dropped key raises); for
        cross-attention a filled cache is reused as is and ``context`` may then be None.
        Linear attention takes a :class:`LinearStateCache` instead. ``positions``: RoPE
        positions of the queries, ``(Tq,)`` or ``(B, Tq)`` (default: consecutive after the
        cache).

        Returns ``out (B, Tq, d_model)``, or ``(out, weights (B, H, Tq, Tk))`` when
        ``return_weights``.
        """
        self._check_input("x", x)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache or None, got {type(cache).__name__}")
        if isinstance(cache, LinearStateCache) and self.linear is None:
            raise ValueError("cache: a LinearStateCache holds linear attention's state; this "
                             "layer runs softmax attention (use a KVCache)")
        cross = context is not None or (cache is not None and cache.cross)
        if cross:
            if self.rope is not None or self.alibi is not None:
                raise ValueError("context: RoPE/ALiBi positions apply to self-attention only; "
                                 "build the cross-attention module with positions=None")
            q = self.project_q(x)
            if cache is not None and cache.cross and cache.k is not None:
                k, v = cache.k, cache.v                 # encoder output: projected once
            else:
                if cache is not None and cache.k is not None:
                    raise ValueError("cache: holds self-attention keys; cross-attention needs "
                                     "its own KVCache")
                if context is None:
                    raise ValueError("context: expected the encoder output (B, Tk, d_model) "
                                     "for an empty cross-attention cache, got None")
                self._check_input("context", context)
                if context.shape[0] != x.shape[0]:
                    raise ValueError(f"context: expected batch size {x.shape[0]} (from x), got "
                                     f"{context.shape[0]}")
                k, v = self.project_kv(context)
                if cache is not None:
                    cache.set(k, v)
        else:
            q, k, v = self._project_self(x)
            offset = 0 if cache is None else cache.seen
            if self.rope is not None:
                q, k = self.rope(q, k, offset, positions)
            if cache is not None and not isinstance(cache, LinearStateCache):
                k, v = cache.update(k, v)

        spec = self.pattern
        if mask is not None:
            spec = as_mask(mask) if spec is None else spec & mask
        if self.linear is not None:
            out = self._linear_attention(q, k, v, spec, cache, return_weights)
            B, H, Tq, D = out.shape
            return self.o_proj(out.transpose(1, 2).reshape(B, Tq, H * D))
        bias = self.alibi
        if not cross and cache is not None and cache.seen > k.shape[2]:   # keys were dropped
            spec, bias = self._kept(q, k.shape[2], cache, spec)
        res = attention(q, k, v, mask=spec, bias=bias,
                        dropout_p=self.dropout if self.training else 0.0,
                        backend=self.backend, return_weights=return_weights)
        out, w = res if return_weights else (res, None)
        B, H, Tq, D = out.shape
        out = self.o_proj(out.transpose(1, 2).reshape(B, Tq, H * D))
        return (out, w) if return_weights else out

    def _linear_attention(self, q, k, v, spec, cache, return_weights) -> Tensor:
        """Linear attention on ``(B, H, T, D)`` heads; refuses what it cannot serve."""
        state = isinstance(cache, LinearStateCache)
        why = ("return_weights: linear attention never forms attention weights"
               if return_weights
               else "cache: linear attention decodes from its recurrent state, a "
               "LinearStateCache (GPT.new_cache(bounded=True)), not a KVCache"
               if cache is not None and not state
               else "mask: a LinearStateCache decodes causal linear attention; expected a "
               "causal() pattern, got none" if state and spec is None
               else "positions: ALiBi is a softmax bias; linear attention cannot apply it"
               if self.alibi is not None
               else "dropout: linear attention has no weights to drop; build the module with "
               "dropout=0" if self.dropout and self.training
               else None if spec is None or spec == causal()
               else f"mask: linear attention serves no mask or causal() only, got {spec!r}")
        if why:
            raise ValueError(why)
        if state:
            return cache.attend(q, k, v, self.linear)
        return linear_attention(q, k, v, self.linear, causal=spec is not None)

    def _kept(self, q: Tensor, Tk: int, cache: KVCache, spec):
        """``cache`` returned ``Tk`` keys at positions 0..G-1 (its sinks) and
        ``seen - Tk + G .. seen - 1``, having dropped those between. Raises if the pattern
        could read a dropped key; else returns the mask and bias of the kept keys: the full
        problem's columns at their absolute positions (unchanged for a plain window)."""
        Tq, full = q.shape[2], cache.seen
        G = min(getattr(cache, "sinks", 0), Tk)
        self._check_window(Tq, Tk, cache, G)
        bias = self.alibi
        if not G and spec.toeplitz and (bias is None or bias.toeplitz):
            return spec, bias             # distances only: the end-aligned mask is the same
        spec = spec.resolve(Tq, full).to(q.device)
        spec.validate(q.shape[0], self.n_heads, Tq, full)

        def columns(m, **kw):                                      # (Bm, Hm, Tq, Tk)
            return torch.cat([m.tile(0, Tq, 0, G, Tq=Tq, Tk=full, device=q.device, **kw),
                              m.tile(0, Tq, full - Tk + G, full, Tq=Tq, Tk=full,
                                     device=q.device, **kw)], dim=-1)
        keep = columns(spec)
        return (None if bool(keep.all()) else as_mask(keep),
                None if bias is None else columns(bias, dtype=torch.float32))

    def _check_window(self, Tq: int, Tk: int, cache: KVCache, G: int = 0) -> None:
        """A bounded cache dropped positions G..seen-Tk+G-1: the pattern must see none."""
        p, n, full = self.pattern, cache.seen - Tk, cache.seen
        p = None if p is None else p.resolve(Tq, full)
        if p is not None:
            g, w = kept_keys(p)       # its structure proves it (O(1)), else evaluate
            if g <= G and w <= Tk - G - Tq or not bool(
                    p.tile(0, Tq, G, G + n, Tq=Tq, Tk=full).any()):
                return
        raise ValueError(f"cache: {cache!r} has dropped {n} positions that the pattern "
                         f"{p!r} would attend to; use a pattern that reads only what it keeps "
                         f"(window(w) with w <= the cache window, plus its sinks) or a full "
                         f"KVCache")

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, fused={self.fused}, pattern={self.pattern!r}, "
                f"positions={'rope' if self.rope else 'alibi' if self.alibi else None}, "
                f"backend={self.backend!r}" + (f", linear={self.linear!r}" if self.linear else ""))
