"""What a model attends to: head-type scores, word-level attention, head ranking by contrast.

Pure functions over attention weights ``w (L, H, Tq, Tk)`` (rows sum to 1 over keys).
Head-type scores, each in [0, 1] per (layer, head); None where a type does not apply:

* ``previous``: mean over rows i >= 1 of w[i, i-1]      (previous-token head; Tq == Tk)
* ``next``:     mean over rows i < T-1 of w[i, i+1]     (next-token head; bidirectional only)
* ``self``:     mean over rows of w[i, i]               (Tq == Tk)
* ``first``:    mean over rows of w[i, 0]               (first-token / attention sink)
* ``broad``:    mean over rows of H(w[i]) / log(n_i)    (normalised entropy; 1 = uniform over
  the n_i keys row i can see: Tk, or i + 1 + Tk - Tq for causal maps)

For causal maps row 0 sees one key only; it is left out of ``self``/``first``/``broad``.

**Contrast** (:func:`rank_heads`): with word-level weights ``W`` (see below), A's weight
to B is ``W[A, B]``; the *others' mean* is the mean of ``W[k, B]`` over the other words
k (neither A nor B; for causal maps only those after B, which can see it; 0 if there
are none). ``contrast =
W[A, B] - others`` separates "A attends to B" from "everyone attends to B" (a head where
every word looks at B scores ~0); ``ratio = W[A, B] / others``. Heads rank by contrast.

Words: see :mod:`attnkit.sources.words`. Word-level attention sums over a word's key
pieces (mass received) and averages over its query pieces (mass sent per piece).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sources.words import Tokens, find_word, from_pieces

HEAD_TYPES = ("previous", "next", "self", "first", "broad")


def _check_weights(w: Tensor) -> Tensor:
    if not isinstance(w, Tensor) or w.dim() not in (3, 4):
        raise ValueError(f"weights: expected (L, H, Tq, Tk) or (H, Tq, Tk) attention weights, "
                         f"got {getattr(w, 'shape', type(w).__name__)}")
    return w if w.dim() == 4 else w.unsqueeze(0)


def head_scores(weights: Tensor, causal: bool = False) -> dict[str, Tensor | None]:
    """Scores of every head type, each a float64 tensor (L, H) in [0, 1], or None where
    the type does not apply (rectangular maps; ``next`` on causal maps)."""
    w = _check_weights(weights).double()
    L, H, Tq, Tk = w.shape
    square = Tq == Tk
    rows = torch.arange(Tq)
    visible = (rows + 1 + Tk - Tq).clamp(max=Tk) if causal else torch.full((Tq,), Tk)
    keep = visible > 1 if causal else torch.ones(Tq, dtype=torch.bool)     # (Tq,)
    if not bool(keep.any()):
        keep = torch.ones(Tq, dtype=torch.bool)
    diag = lambda k: torch.diagonal(w, offset=k, dim1=-2, dim2=-1)  # noqa: E731
    ent = -(w * torch.log(w.clamp_min(1e-30))).sum(-1)                      # (L, H, Tq)
    norm = torch.log(visible.double().clamp_min(2.0))
    zero = torch.zeros(L, H, dtype=w.dtype)
    out: dict[str, Tensor | None] = {
        "previous": (diag(-1).mean(-1) if Tq > 1 else zero) if square else None,
        "next": (diag(1).mean(-1) if Tq > 1 else zero) if square and not causal else None,
        "self": diag(0)[..., keep].mean(-1) if square else None,
        "first": w[..., keep, 0].mean(-1),
        "broad": (ent / norm)[..., keep].mean(-1) if Tk > 1 else zero,
    }
    return out


def classify_heads(weights: Tensor, threshold: float = 0.5, causal: bool = False,
                   layers: list[int] | None = None) -> list[dict]:
    """One row per head: layer (``layers[i]`` if given), head, every score (None where it
    does not apply), and the best type if it reaches ``threshold`` (else None)."""
    scores = head_scores(weights, causal=causal)
    L, H = scores["first"].shape
    names = list(range(L)) if layers is None else list(layers)
    if len(names) != L:
        raise ValueError(f"layers: expected {L} layer numbers (one per weight layer), got "
                         f"{len(names)}")
    out = []
    for i in range(L):
        for h in range(H):
            s = {t: (None if scores[t] is None else float(scores[t][i, h])) for t in HEAD_TYPES}
            have = {t: v for t, v in s.items() if v is not None}
            best = max(have, key=have.get)
            out.append({"layer": names[i], "head": h, **s,
                        "type": best if have[best] >= threshold else None})
    return out


def word_attention(w: Tensor, groups: list[list[int]], key_groups=None) -> Tensor:
    """(..., Tq, Tk) token weights -> (..., Wq, Wk) word weights (sum over key pieces,
    mean over query pieces). ``key_groups`` defaults to ``groups`` (self-attention)."""
    kg = groups if key_groups is None else key_groups
    cols = torch.stack([w[..., g].sum(-1) for g in kg], dim=-1)         # (..., Tq, Wk)
    return torch.stack([cols[..., g, :].mean(-2) for g in groups], dim=-2)  # (..., Wq, Wk)


def causal_order(words, i: int, j: int, a: str, b: str) -> None:
    """In a causal model word ``i`` can attend to word ``j`` only if ``j`` comes first."""
    if i < j:
        raise ValueError(f"--from: in a causal model {a!r} (word {i + 1}) comes before {b!r} "
                         f"(word {j + 1}) and cannot attend to it; pick a later occurrence "
                         f"(e.g. {a}#2) or swap --from and --to")


def check_words(toks: Tokens, pairs, causal: bool) -> None:
    """``--from/--to/--versus`` (``pairs``: ``[(option, word)]``) name words of the text
    (and, in a causal model, ``--from`` comes after ``--to``); UsageError otherwise."""
    from ..core.errors import UsageError
    try:
        idx = [find_word(toks.words, word, arg) for arg, word in pairs]
        if causal:
            causal_order(toks.words, idx[0], idx[1], pairs[0][1], pairs[1][1])
    except ValueError as e:
        raise UsageError(str(e)) from None


def rank_heads(weights: Tensor, tokens, from_word: str, to_word: str, *,
               versus: str | None = None, causal: bool = False,
               layers: list[int] | None = None, top: int | None = None) -> list[dict]:
    """Heads ranked by contrast (module doc), strongest first. Each row: ``layer``,
    ``head``, ``weight`` (A -> B), ``others`` (the other words' mean weight to B),
    ``contrast``, ``ratio`` and, with ``versus`` C, ``versus_weight`` (A -> C) and
    ``margin`` (A -> B minus A -> C). ``tokens``: a :class:`Tokens` or WordPiece strings."""
    w = _check_weights(weights)
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights: ranking needs self-attention (Tq == Tk), got "
                         f"{tuple(w.shape)}")
    toks = tokens if isinstance(tokens, Tokens) else from_pieces(list(tokens), scheme="wordpiece")
    if len(toks) != w.shape[-1]:
        raise ValueError(f"tokens: expected {w.shape[-1]} tokens (from weights), got {len(toks)}")
    words = toks.words
    i, j = find_word(words, from_word, "--from"), find_word(words, to_word, "--to")
    if i == j:
        raise ValueError(f"--to: {to_word!r} is the same word as --from {from_word!r}")
    c = find_word(words, versus, "--versus") if versus is not None else None
    if causal:
        causal_order(words, i, j, from_word, to_word)
    ww = word_attention(w.double(), toks.groups())                     # (L, H, W, W)
    others = [k for k in range(len(words)) if k not in (i, j) and (not causal or k > j)]
    a = ww[..., i, j]                                                    # (L, H)
    base = ww[..., others, j].mean(-1) if others else torch.zeros_like(a)  # none: 0
    L, H = a.shape
    names = list(range(L)) if layers is None else list(layers)
    rows = []
    for li in range(L):
        for h in range(H):
            wt, ot = float(a[li, h]), float(base[li, h])
            r = {"layer": names[li], "head": h, "weight": wt, "others": ot,
                 "contrast": wt - ot, "ratio": wt / ot if ot > 0 else math.inf,
                 "n_others": len(others)}
            if c is not None:
                r["versus_weight"] = float(ww[li, h, i, c])
                r["margin"] = wt - r["versus_weight"]
            rows.append(r)
    rows.sort(key=lambda r: r["contrast"], reverse=True)
    return rows if top is None else rows[:top]
