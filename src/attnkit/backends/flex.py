"""FlexAttention (torch.compile) for mask specs: block-sparse, compiled per configuration.

The spec's ``mask_mod`` becomes a BlockMask (built once per spec value, batch/head
extent and (Tq, Tk), then cached; opaque mask_mods are rebuilt every call); softcap and
biases become a ``score_mod``. The first call of a configuration compiles (5-30 s on a
2-core CPU).

Why ``dynamic=False``: torch 2.13's CPU FlexAttention template renames the symbolic
ints of a dynamic-shape compile with a string replace; once ``torch.compile`` (automatic
dynamic shapes, from the second distinct value on) turns a closure-captured int -- a
window size, the offset ``Tk - Tq`` -- into a symbol whose generated name collides with
the template's tile-size names, the bound silently becomes the tile width (errors of
1.5-3.2 in our tests) or the C++ fails to compile. With static shapes every value is a
constant: exact in every case we tried (``tests/test_flex.py``). The price is one
compile per configuration (shapes, dtypes, mask and bias parameters), so the backend
counts its configurations and refuses new ones past :data:`MAX_CONFIGURATIONS` (torch
would otherwise fall back to eager FlexAttention, which materialises Tq x Tk scores).

Cannot serve: dropout; gradients on CPU (torch has no CPU FlexAttention backward); CPU
calls inside an outer ``torch.compile`` (its dynamic shapes would reach the template);
on CUDA, window/dilated masks (wrong in our CUDA tests with torch 2.11, before static
shapes; not re-tested since). ``auto`` picks it only where it measured faster than
``tiled`` on CPU (opaque mask_mods at long lengths, see ``auto_preference``).
"""
from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict

import torch
from torch import Tensor

from ..call import AttentionCall
from ..call.blocks import Uncacheable, fingerprint
from ..sparse.pattern import SpecPattern
from .base import Backend, auto_priority

__all__ = ["FlexBackend", "compile_flex", "compiled_configurations", "MAX_CONFIGURATIONS",
           "AUTO_MIN_PAIRS"]

MAX_CONFIGURATIONS = 64   # distinct compiled configurations per process, then refused
BLOCK_MASK_CACHE = 32     # BlockMasks kept (LRU)
AUTO_MIN_PAIRS = 1 << 28  # Tq * Tk from which 'auto' prefers flex (see auto_preference)
COMPILED_MASK_PAIRS = 1 << 26  # Tq * Tk from which BlockMasks are built compiled


def compile_flex(fn):
    """``torch.compile`` as this backend compiles FlexAttention: static shapes, so no
    captured int ever becomes a symbol (see the module doc)."""
    return torch.compile(fn, dynamic=False)


@functools.lru_cache(maxsize=None)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention
    return compile_flex(flex_attention)


def _flex_available() -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the torch build
        return f"FlexAttention is not available in this torch ({e})"
    return None


_lock = threading.Lock()
_configurations: set = set()


def compiled_configurations() -> int:
    """How many distinct configurations this process has compiled (refused past
    :data:`MAX_CONFIGURATIONS`)."""
    return len(_configurations)


_block_masks: OrderedDict = OrderedDict()


def _configuration(call: AttentionCall) -> tuple:
    """What a static-shape compile specialises on (a superset: counting these never
    undercounts torch's recompiles)."""
    return (call.device.type, str(call.dtype), tuple(call.q.shape), tuple(call.k.shape),
            tuple(call.v.shape), call.q.stride(), call.k.stride(), call.v.stride(),
            fingerprint(call.mask, False), fingerprint(call.bias, False), call.softcap,
            call.scale)


def _dynamo_limits():
    """Our configuration count refuses first; should torch's recompile limit still be hit,
    it raises instead of running eager FlexAttention (Tq x Tk scores)."""
    limit = MAX_CONFIGURATIONS + 16
    return torch._dynamo.config.patch(recompile_limit=limit,
                                      accumulated_recompile_limit=max(256, 4 * limit),
                                      fail_on_recompile_limit_hit=True)


@functools.lru_cache(maxsize=None)
def _compiled_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask
    return compile_flex(create_block_mask)


def _create(call: AttentionCall, B, H):
    """torch's ``create_block_mask``; compiled from COMPILED_MASK_PAIRS on, where the
    eager one materialises Tq x Tk int64 (32 GiB at 64k tokens; the compiled one reduces
    to blocks as it evaluates)."""
    from torch.nn.attention.flex_attention import create_block_mask
    make = create_block_mask
    if call.Tq * call.Tk > COMPILED_MASK_PAIRS:
        make = _compiled_block_mask()
    with _dynamo_limits():
        return make(call.mask.mask_mod(call.Tq, call.Tk), B, H, call.Tq, call.Tk,
                    device=call.device)


def _block_mask(call: AttentionCall):
    """FlexAttention's BlockMask for the call's mask (torch's ``create_block_mask``),
    cached per (spec, extent, Tq, Tk, device): building one costs seconds at 16k tokens.

    A BlockMask assembled by hand from attnkit's own block map (``from_kv_blocks``) gave
    run-to-run different, wrong outputs in our tests (torch 2.13), so torch builds it."""
    m = call.mask
    B = call.B if m.batch_dependent else None
    H = call.H if m.head_dependent else None
    try:
        key = (fingerprint(m), B, H, call.Tq, call.Tk, str(call.device))
    except Uncacheable:  # an opaque mask_mod: what it reads may change, built every call
        return _create(call, B, H)
    with _lock:
        hit = _block_masks.get(key)
        if hit is not None:
            _block_masks.move_to_end(key)
            return hit
    bm = _create(call, B, H)
    with _lock:
        _block_masks[key] = bm  # its mask_mod holds the spec: the key's tensor ids stay alive
        while len(_block_masks) > BLOCK_MASK_CACHE:
            _block_masks.popitem(last=False)
    return bm


def _has_window(spec) -> bool:
    """Does the spec (or a part of it) bound the query-key distance like a sliding or
    dilated window? (causal() bounds it on one side only: not a window.)"""
    lo, hi = spec.distance_bounds()
    if math.isfinite(hi) or (math.isfinite(lo) and lo < 0):
        return True
    inner = (spec.spec,) if isinstance(spec, SpecPattern) else ()  # a named pattern's mask
    return any(_has_window(p) for p in (*getattr(spec, "parts", ()), *inner))


class FlexBackend(Backend):
    name = "flex"
    description = "torch FlexAttention, compiled (block-sparse; first call compiles)"

    def unsupported(self, call: AttentionCall) -> str | None:
        why = _flex_available()
        if why:
            return why
        if call.dropout_p > 0:
            return "FlexAttention has no dropout (use 'tiled', 'sdpa' or 'reference')"
        if call.device.type == "cpu" and call.needs_grad:
            return (f"FlexAttention has no CPU backward in torch {torch.__version__}; use "
                    "'tiled' for gradients (or run under torch.no_grad())")
        if call.device.type == "cuda" and call.mask is not None and _has_window(call.mask):
            # seen on an H100 with torch 2.11 (dynamic shapes): causal() & window(37) wrong
            return ("FlexAttention gave wrong results for window/dilated masks in our CUDA "
                    "tests (torch 2.11); use 'tiled'")
        if call.device.type == "cpu" and torch.compiler.is_compiling():
            # inside an outer torch.compile our dynamic=False does not hold: the outer
            # compile's (dynamic) shapes reach the CPU template (see the module doc)
            return ("inside an outer torch.compile, FlexAttention's CPU kernel may see "
                    "symbolic sizes (wrong results in torch 2.13); use 'tiled'")
        if call.device.type not in ("cpu", "cuda"):
            return f"FlexAttention runs on CPU and CUDA, got device {call.device.type!r}"
        with _lock:
            full = (len(_configurations) >= MAX_CONFIGURATIONS
                    and _configuration(call) not in _configurations)
        if full:
            return (f"FlexAttention compiles once per configuration (shapes, dtype, mask and "
                    f"bias parameters) and this process has compiled {MAX_CONFIGURATIONS} "
                    "already (attnkit.backends.flex.MAX_CONFIGURATIONS); use 'tiled'")
        return None

    def auto_preference(self, call: AttentionCall):
        """On CPU, forward only (``unsupported`` refuses gradients), for an opaque mask_mod
        at Tq * Tk >= AUTO_MIN_PAIRS: both flex and tiled then evaluate the mask densely
        every call, and flex was faster (see the reason). Everywhere else we measured,
        tiled was faster, so flex is left to explicit requests."""
        if (call.device.type == "cpu" and call.mask is not None and call.mask.opaque
                and call.Tq * call.Tk >= AUTO_MIN_PAIRS):
            return auto_priority("flex:opaque-cpu"), (
                "opaque mask_mod, forward on CPU at Tq*Tk >= 2^28: flex 1.10x tiled "
                "(measured at 16k, 1 thread; equal at 4k; tiled was faster for "
                "window, causal, dilated and document masks); its first call of a "
                "shape compiles (~10 s)")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        with _lock:
            _configurations.add(_configuration(call))
        block_mask = None if call.mask is None else _block_mask(call)
        cap = call.softcap
        term = call.bias.score_mod_terms(call.Tq, call.Tk) if call.bias is not None else None
        score_mod = None
        if cap is not None or term is not None:
            def score_mod(score, b, h, q_idx, kv_idx):
                if cap is not None:
                    score = cap * torch.tanh(score / cap)
                if term is not None:
                    score = score + term(b, h, q_idx, kv_idx)
                return score
        q, k, v = call.q, call.k, call.v
        if not call.needs_grad:  # under no_grad: CPU flex refuses inputs that require grad
            q, k, v = q.detach(), k.detach(), v.detach()
        with _dynamo_limits():
            return _compiled()(q, k, v, score_mod=score_mod, block_mask=block_mask,
                               scale=call.scale, enable_gqa=call.G > 1)
