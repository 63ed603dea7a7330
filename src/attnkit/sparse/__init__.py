"""Named sparse attention patterns: what they are and their exact pair counts (one short
file per pattern, its math in the docstring). This layer only defines them; they run in
:mod:`attnkit.engine.sparse` (:func:`attnkit.sparse_attention`), time following the pairs.

=================  ==========================  =========================================
pattern            pairs (n tokens)            how ``sparse_attention`` runs it
=================  ==========================  =========================================
window(w)          ~ n (w+1)  (2w+1 bidir.)    natural order; tiles off the band skipped
strided(s)         ~ n s + n^2/(2s)            band (natural) + the multiples of s on
                                               positions sorted by (p mod s, p div s)
fixed(s, c)        ~ n s/2 + c n^2/(2s)        blocks (natural) + summary keys gathered
dilated(w, d)      ~ n (w+1)                   positions sorted by (p mod d, p div d)
longformer(w, g)   ~ n (2w+1) + 2 g n          natural order (global rows/cols, band)
bigbird(b, ...)    ~ n b (2w+1+2g+r)           natural order, tiles = BigBird blocks
log_sparse()       ~ n (log2 n + 1)            one diagonal per offset (no tiles)
=================  ==========================  =========================================

Every pattern is a small frozen object (:class:`Pattern`): ``p.at(n)`` is its mask spec
(for :func:`attnkit.attention`, composable with the specs of :mod:`attnkit.masks`;
``attention(q, k, v, mask=p)`` resolves it itself), ``p.pairs(n)`` / ``p.density(n)``
count exactly without an n x n tensor, ``p.components(n)`` splits it into disjoint
pieces laid out so their pairs fill whole tiles. **Use** :func:`attnkit.sparse_attention` **for
speed**: ``attention(mask=p)`` gives the same numbers, but the tiled kernel then skips only
tiles empty in natural order (strided, fixed, dilated and log-sparse have almost none).

Strided, fixed and log-sparse are causal (as in their papers); window and dilated take
``causal=`` (default True); longformer and bigbird ``causal=`` (default False, as in their
papers). The variant names used by ``attnkit bench``/``train`` are in :mod:`.registry`.
"""
from .bigbird import BigBirdPattern, bigbird
from .dilated import DilatedPattern, dilated
from .fixed import FixedPattern, fixed
from .log_sparse import LogSparsePattern, log_sparse
from .longformer import LongformerPattern, longformer
from .pattern import OffsetPiece, Pattern, TiledPiece
from .registry import PATTERNS, PatternEntry, build_pattern
from .strided import StridedPattern, strided
from .window import WindowPattern, window

__all__ = ["Pattern", "window", "strided", "fixed", "dilated", "longformer", "bigbird",
           "log_sparse", "PATTERNS", "PatternEntry", "build_pattern",
           "WindowPattern", "StridedPattern", "FixedPattern", "DilatedPattern",
           "LongformerPattern", "BigBirdPattern", "LogSparsePattern", "TiledPiece",
           "OffsetPiece"]

