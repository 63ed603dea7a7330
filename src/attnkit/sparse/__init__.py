"""Named sparse patterns: what they are and their exact pair counts (one short file per
pattern, its math in the docstring). A pattern is a mask spec
(:class:`attnkit.masks.Pattern`): ``attention(q, k, v, mask=p)`` runs it at its pair
cost on ``tiled`` (``auto`` picks it when under half the pairs are attended), by its
disjoint components (:mod:`attnkit.kernels.pieces`). This layer only defines them.

=================  ==========================  =========================================
pattern            pairs (n tokens)            how ``tiled`` runs it
=================  ==========================  =========================================
window(w[, r])     ~ n (w+1)  (w+r+1)          natural order; tiles off the band skipped
strided(s)         ~ n s + n^2/(2s)            band (natural) + the multiples of s on
                                               positions sorted by (p mod s, p div s)
fixed(s, c)        ~ n s/2 + c n^2/(2s)        blocks (natural) + summary keys gathered
dilated(w, d)      ~ n (w+1)                   positions sorted by (p mod d, p div d)
longformer(w, g)   ~ n (2w+1) + 2 g n          natural order (global rows/cols, band)
bigbird(b, ...)    ~ n b (2w+1+2g+r)           natural order, tiles = BigBird blocks
log_sparse()       ~ n (log2 n + 1)            one diagonal per offset (no tiles)
=================  ==========================  =========================================

Every pattern is a small frozen spec: composable with the specs of :mod:`attnkit.masks`
(a composition is a plain spec, run in natural order), ``p.at(n)`` its spec for n tokens
(BigBird's random blocks are drawn per n), ``p.pairs(n)`` / ``p.density(n)`` count exactly
without an n x n tensor, ``p.components(n)`` splits it into disjoint pieces laid out so
their pairs fill whole tiles. ``window`` and ``dilated`` are the functions of
:mod:`attnkit.masks` (one type each: ``window(w)`` is causal, ``window(w, w)``
bidirectional).

Strided, fixed and log-sparse are causal (as in their papers); dilated takes ``causal=``
(default True); longformer and bigbird ``causal=`` (default False, as in their papers).
The variant names used by ``attnkit bench``/``train`` are in :mod:`.registry`.
"""
from .bigbird import BigBirdPattern, bigbird
from .fixed import FixedPattern, fixed
from .log_sparse import LogSparsePattern, log_sparse
from .longformer import LongformerPattern, longformer
from ..masks import Dilated, Window, dilated, window
from .pattern import OffsetPiece, Pattern, SpecPattern, TiledPiece
from .registry import PATTERNS, PatternEntry, build_pattern
from .strided import StridedPattern, strided

__all__ = ["Pattern", "window", "strided", "fixed", "dilated", "longformer", "bigbird",
           "log_sparse", "PATTERNS", "PatternEntry", "build_pattern",
           "Window", "StridedPattern", "FixedPattern", "Dilated", "SpecPattern",
           "LongformerPattern", "BigBirdPattern", "LogSparsePattern", "TiledPiece",
           "OffsetPiece"]

