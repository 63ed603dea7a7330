"""Hugging Face masks as attnkit specs: the ``AttentionMaskInterface`` function of the
``attnkit`` implementations, and the reader that turns transformers' mask functions
(``masking_utils``) into structured specs.

transformers describes a mask by a ``mask_function(b, h, q_idx, kv_idx)`` evaluated at
*absolute* positions: query ``i`` of a call at ``q_offset + i``, key ``j`` at
``kv_offset + j``. attnkit's position specs use the distance ``d = (i + Tk - Tq) - j``
(end-aligned), so with ``c = kv_offset - q_offset`` and ``off = Tk - Tq``:

===================================  ============================================
transformers function                attnkit spec
===================================  ============================================
``causal_mask_function``             band ``d >= c + off``
``sliding_window_overlay(w)``        band ``d <= w - 1 + c + off``
``sliding_window_bidirectional(w)``  band ``|d - (c + off)| <= w``
``bidirectional_mask_function``      ``full()``
``padding_mask_function(pm)``        ``key_padding(pm[:, kv_offset:])``
``packed_sequence_mask_function``    ``document(ids)``
``chunked_overlay(size, left_pad)``  ``document((position - left_pad[b]) // size)``
``blockwise_overlay(ids)``           ``document`` (negative ids: no block)
``and_masks`` / ``or_masks``         ``&`` / ``|``
===================================  ============================================

so ``tiled`` skips empty tiles and block maps are analytic. A function the reader does
not know (a model's own) becomes :func:`attnkit.masks.from_mask_mod` -- exact, but its
tiles are classified by evaluating it, which ``select_backend``'s reason says.
"""
from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

from ... import masks as M
from ...masks import MaskSpec, Window
from .mask_view import HFMask
from .support import factory_codes, refuse_model

__all__ = ["attnkit_mask", "attnkit_eager_mask", "translate", "mask_mod_reader",
           "dense_required"]

INF = math.inf


_MU: list = []


def _hf():
    if not _MU:
        from transformers import masking_utils as mu
        _MU.append(mu)
    return _MU[0]


_CODES: dict | None = None


def _kind(fn) -> tuple[str | None, dict]:
    global _CODES
    if _CODES is None:
        _CODES = {v: k for k, v in factory_codes().items()}
    code = getattr(fn, "__code__", None)
    kind = _CODES.get(code)
    cells = {}
    if kind is not None and fn.__closure__:
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__)))
    return kind, cells


def _band(lo: float, hi: float) -> MaskSpec:
    """``lo <= d <= hi`` on the end-aligned distance (any ints, infinities allowed)."""
    if lo == 0 and hi == INF:
        return M.causal()
    return Window(hi, -lo)


def _slice(t: Tensor, start: int, n: int) -> Tensor:
    if t.shape[-1] < start + n:  # shorter than the keys (HF pads with False / -1 itself)
        raise ValueError(f"mask: a {tuple(t.shape)} tensor cannot cover positions "
                         f"{start}..{start + n - 1}")
    return t[:, start:start + n]


def translate(fn, B: int, Tq: int, Tk: int, q_offset: int = 0, kv_offset: int = 0,
              packed: Tensor | None = None) -> MaskSpec | None:
    """The spec of a transformers mask function for a (B, Tq, Tk) call whose first query
    and key sit at ``q_offset`` / ``kv_offset``, or None if it is not a known function."""
    kind, cells = _kind(fn)
    c, off = kv_offset - q_offset, Tk - Tq
    if kind == "causal":
        return _band(c + off, INF)
    if kind == "bidirectional":
        return M.full()
    if kind == "sliding":
        return _band(-INF, cells["sliding_window"] - 1 + c + off)
    if kind == "sliding_bidirectional":
        w = cells["sliding_window"]
        return _band(c + off - w, c + off + w)
    if kind == "padding":
        return M.key_padding(_slice(cells["padding_mask"].bool(), kv_offset, Tk))
    if kind == "packed":
        ids = cells["packed_sequence_mask"]
        return M.document(_slice(ids, kv_offset, Tk), q_ids=_slice(ids, q_offset, Tq))
    if kind == "blockwise":
        ids = cells["block_sequence_ids"]
        return M.document(torch.where(ids < 0, -1, ids)[:, kv_offset:kv_offset + Tk],
                          q_ids=torch.where(ids < 0, -2, ids)[:, q_offset:q_offset + Tq])
    if kind == "chunked":
        size, pad = cells["chunk_size"], cells["left_padding"].view(-1, 1)
        pos_k = torch.arange(Tk, device=pad.device) + kv_offset
        pos_q = torch.arange(Tq, device=pad.device) + q_offset
        return M.document(torch.div(pos_k - pad, size, rounding_mode="floor"),
                          q_ids=torch.div(pos_q - pad, size, rounding_mode="floor"))
    if kind == "offsets":
        return translate(cells["mask_function"], B, Tq, Tk, q_offset + int(cells["q_offset"]),
                         kv_offset + int(cells["kv_offset"]), packed)
    if kind == "remap" and packed is not None and _consecutive(cells["position_ids"], packed):
        # inside a packed document positions advance by one per token, so a band on the
        # remapped positions is the same band on the indices (documents kept apart by the
        # packed-sequence part of the enclosing and_masks)
        return translate(cells["mask_function"], B, Tq, Tk, 0, 0, packed)
    if kind in ("and", "or"):
        parts = list(cells["mask_functions"])
        if kind == "and":
            packed = next((_kind(p)[1]["packed_sequence_mask"] for p in parts
                           if _kind(p)[0] == "packed"), packed)
        specs = [translate(p, B, Tq, Tk, q_offset, kv_offset, packed) or _opaque(
            p, B, q_offset, kv_offset) for p in parts]
        out = specs[0]
        for s in specs[1:]:
            out = (out & s) if kind == "and" else (out | s)
        return out
    return None


def _consecutive(pos: Tensor, packed: Tensor) -> bool:
    """Do positions advance by exactly one between neighbours of the same document?"""
    if pos.shape != packed.shape or pos.shape[-1] < 2:
        return pos.shape == packed.shape
    same = packed[:, 1:] == packed[:, :-1]
    return bool((((pos[:, 1:] - pos[:, :-1]) == 1) | ~same).all())


def _opaque(fn, B: int, q_offset: int, kv_offset: int) -> MaskSpec:
    """An unknown mask function at raw indices + the call's offsets (exact, evaluated)."""
    def at_positions(b, h, q_idx, kv_idx):
        return fn(b, h, q_idx + q_offset, kv_idx + kv_offset)
    at_positions.__qualname__ = getattr(fn, "__qualname__", "mask_function")
    return M.from_mask_mod(at_positions, batch_size=B)


def mask_mod_reader(fn, B: int, H: int) -> MaskSpec | None:
    """``masks.from_mask_mod`` reader: a known transformers function at raw indices
    (FlexAttention's convention), resolved per (Tq, Tk)."""
    if _kind(fn)[0] is None:
        return None
    return M.PerLength(lambda Tq, Tk: translate(fn, B, Tq, Tk), f"hf:{fn.__qualname__}")


def _int(x) -> int:
    return int(x.item()) if isinstance(x, Tensor) else int(x)


# transformers' functions that build masks ahead of time and pass them back to ``forward``
# as ``attention_mask`` (``generate`` with a compileable cache; a model may override it)
PRECOMPUTE = frozenset({"create_masks_for_generate"})


def dense_required(max_depth: int = 8) -> bool:
    """Must the mask interface return a plain 4-D tensor rather than a spec? Yes under
    ``torch.compile`` (a spec's Python ints and code objects would become guards: one
    recompilation per decoding offset, and dynamo cannot guard on some of them) and when
    transformers builds the mask ahead of time (``generate`` with a static cache calls
    ``create_masks_for_generate``, found among the callers): it passes that mask back to
    ``forward`` as ``attention_mask``, which transformers accepts only as a 4-D tensor or
    a BlockMask, and which model code reads (``.ndim``, ``.shape``, slicing)."""
    if torch.compiler.is_compiling():
        return True
    f = sys._getframe(1)
    for _ in range(max_depth):
        if f is None:
            return False
        if f.f_code.co_name in PRECOMPUTE:
            return True
        f = f.f_back
    return False


def attnkit_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                 mask_function=None, attention_mask: Tensor | None = None,
                 reads_as: str = "sdpa", **kwargs):
    """transformers' ``AttentionMaskInterface`` entry for the ``attnkit`` implementations:
    the model's mask as one attnkit spec (never a dense (Tq, Tk) tensor when the
    structure is known) in an :class:`~.mask_view.HFMask`, which reads like the
    ``(B, 1, Tq, Tk)`` tensor of transformers' ``sdpa_mask`` (``reads_as="eager"``: of
    ``eager_mask``) and whose spec the attention function takes -- except where
    :func:`dense_required`: there the boolean tensor (or None) ``sdpa_mask`` builds,
    which the attention function reads as a mask."""
    mu = _hf()
    fn = mask_function or mu.causal_mask_function
    if not torch.compiler.is_compiling():   # (a model's first call is never compiled)
        refuse_model(kwargs.get("config"))
    if dense_required():
        return mu.sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset,
                            mask_function=fn, attention_mask=attention_mask, **kwargs)
    q_off, kv_off = _int(q_offset), _int(kv_offset)
    spec = translate(fn, batch_size, q_length, kv_length, q_off, kv_off)
    if spec is None:
        spec = _opaque(fn, batch_size, q_off, kv_off)
    if attention_mask is not None:
        attention_mask = attention_mask.bool()
        keep = mu.prepare_padding_mask(attention_mask, kv_length, kv_off)
        if kv_off or keep.shape[-1] != kv_length:
            keep = keep[:, kv_off:kv_off + kv_length]
        if not bool(keep.all()):                 # no padding: keep the fast paths
            spec = spec & M.key_padding(keep)
    dense_args = {k: v for k, v in kwargs.items()
                  if k not in ("dtype", "allow_is_causal_skip", "allow_is_bidirectional_skip")}
    dense_args.update(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                      q_offset=q_off, kv_offset=kv_off, mask_function=fn,
                      attention_mask=attention_mask)
    return HFMask(spec, dense_args, reads_as, kwargs.get("dtype") or torch.float32)


def attnkit_eager_mask(*args, **kwargs):
    """:func:`attnkit_mask` for attnkit standing in for "eager": the mask reads like
    ``eager_mask``'s float tensor (0 where attended, the dtype's minimum elsewhere)."""
    return attnkit_mask(*args, reads_as="eager", **kwargs)
