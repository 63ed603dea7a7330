"""``sparse_attention``: the pair-cost call of a sparse pattern, a thin alias of
``attention(q, k, v, mask=pattern, backend="tiled")`` (:mod:`attnkit.backends.tiled` runs
the pattern's pieces, :mod:`attnkit.kernels.pieces`) that insists on self-attention."""
from __future__ import annotations

from torch import Tensor

from ..backends.selection import resolve_backend
from ..backends.tiled import TiledBackend
from ..call import make_call
from ..core.errors import UnsupportedCall
from ..kernels import TileConfig
from ..masks import MaskSpec

__all__ = ["sparse_attention"]


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern, *, scale: float | None = None,
                     cfg: TileConfig | None = None) -> Tensor:
    """Self-attention restricted to ``pattern`` in time and memory that follow its pairs:
    ``attention(q, k, v, mask=pattern, scale=scale, backend="tiled")``, with ``cfg``
    overriding the tile sizes of every piece.

    q (B, H, n, D), k (B, Hkv, n, D), v (B, Hkv, n, Dv) -> (B, H, n, Dv); GQA allowed.
    ``pattern``: a sparse pattern or any mask spec (run in natural order). Exact;
    differentiable (custom backward). For decoding (Tq < Tk) use ``attention``.
    """
    if not isinstance(pattern, MaskSpec):
        raise TypeError(f"pattern: expected a Pattern or MaskSpec, got {type(pattern).__name__}")
    call = make_call(q, k, v, mask=pattern, scale=scale)  # validates shapes and the pattern
    if call.Tq != call.Tk:  # its pieces need self-attention: say so, never run it otherwise
        raise UnsupportedCall(f"q, k: sparse_attention runs a pattern at its pair cost, which "
                              f"needs self-attention, Tq == Tk; got Tq={call.Tq}, Tk={call.Tk}"
                              " (attnkit.attention serves decoding, in natural order)")
    return (resolve_backend("tiled", call) if cfg is None else TiledBackend(cfg)).forward(call)
