"""What a model attends to: head-type scores, word-level attention, head ranking.

Pure functions over attention weights ``w (L, H, T, T)`` (rows sum to 1 over keys).
Head-type scores, each in [0, 1] per (layer, head):

* ``previous``: mean over rows i >= 1 of w[i, i-1]      (previous-token head)
* ``next``:     mean over rows i < T-1 of w[i, i+1]     (next-token head)
* ``self``:     mean over rows of w[i, i]
* ``first``:    mean over rows of w[i, 0]               (first-token / attention sink)
* ``broad``:    mean over rows of H(w[i]) / log(T)      (normalised entropy; 1 = uniform)

Words from WordPiece tokens: ``##`` pieces continue the previous word; special tokens
([CLS], [SEP], [PAD]) belong to no word. Word-level attention sums over a word's key
pieces (mass received) and averages over its query pieces (mass sent per piece).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

HEAD_TYPES = ("previous", "next", "self", "first", "broad")
SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"}


def _check_weights(w: Tensor) -> Tensor:
    if not isinstance(w, Tensor) or w.dim() not in (3, 4) or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights: expected (L, H, T, T) or (H, T, T) attention weights, got "
                         f"{getattr(w, 'shape', type(w).__name__)}")
    return w if w.dim() == 4 else w.unsqueeze(0)


def head_scores(weights: Tensor) -> dict[str, Tensor]:
    """Scores of every head type, each a float tensor (L, H) in [0, 1]."""
    w = _check_weights(weights).double()
    T = w.shape[-1]
    diag = lambda k: torch.diagonal(w, offset=k, dim1=-2, dim2=-1)  # noqa: E731
    ent = -(w * torch.log(w.clamp_min(1e-30))).sum(-1)              # (L, H, T)
    zero = torch.zeros(w.shape[:2], dtype=w.dtype)
    return {
        "previous": diag(-1).mean(-1) if T > 1 else zero,
        "next": diag(1).mean(-1) if T > 1 else zero,
        "self": diag(0).mean(-1),
        "first": w[..., :, 0].mean(-1),
        "broad": (ent / math.log(T)).mean(-1) if T > 1 else zero,
    }


def classify_heads(weights: Tensor, threshold: float = 0.5) -> list[dict]:
    """One row per head: layer, head, every score, and the best type if it reaches
    ``threshold`` (else None)."""
    scores = head_scores(weights)
    L, H = scores["self"].shape
    rows = []
    for layer in range(L):
        for head in range(H):
            s = {t: float(scores[t][layer, head]) for t in HEAD_TYPES}
            best = max(s, key=s.get)
            rows.append({"layer": layer, "head": head, **s,
                         "type": best if s[best] >= threshold else None})
    return rows


def merge_wordpieces(tokens: list[str]) -> tuple[list[str], list[list[int]]]:
    """WordPiece tokens -> words and, for each word, the indices of its pieces."""
    words, groups = [], []
    for i, tok in enumerate(tokens):
        if tok in SPECIAL:
            continue
        if tok.startswith("##") and groups:
            words[-1] += tok[2:]
            groups[-1].append(i)
        else:
            words.append(tok)
            groups.append([i])
    return words, groups


def word_attention(w: Tensor, groups: list[list[int]]) -> Tensor:
    """(..., T, T) token weights -> (..., W, W) word weights (sum over key pieces, mean
    over query pieces)."""
    cols = torch.stack([w[..., g].sum(-1) for g in groups], dim=-1)     # (..., T, W)
    return torch.stack([cols[..., g, :].mean(-2) for g in groups], dim=-2)  # (..., W, W)


def _find(words: list[str], word: str, arg: str) -> int:
    low = [x.lower() for x in words]
    if word.lower() not in low:
        raise ValueError(f"{arg}: {word!r} is not a word of the sentence; its words are "
                         f"{', '.join(words)}")
    return low.index(word.lower())


def rank_heads(weights: Tensor, tokens: list[str], from_word: str, to_word: str,
               top: int | None = None) -> list[tuple[int, int, float]]:
    """(layer, head, attention from ``from_word`` to ``to_word``), strongest first."""
    w = _check_weights(weights)
    words, groups = merge_wordpieces(tokens)
    i, j = _find(words, from_word, "--from"), _find(words, to_word, "--to")
    ww = word_attention(w.double(), groups)[..., i, j]                  # (L, H)
    order = torch.argsort(ww.flatten(), descending=True).tolist()
    H = ww.shape[1]
    ranked = [(k // H, k % H, float(ww.flatten()[k])) for k in order]
    return ranked if top is None else ranked[:top]


def plot_heads(weights_layer: Tensor, tokens: list[str], path: str, title: str,
               heads: list[int] | None = None) -> None:
    """A grid of heatmaps (one per head) of a layer's weights ``(H, T, T)``, as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    w = weights_layer.detach().float().cpu()
    heads = list(range(w.shape[0])) if heads is None else heads
    cols = min(4, len(heads))
    rows = math.ceil(len(heads) / cols)
    T = w.shape[-1]
    size = max(3.0, min(6.0, 0.22 * T))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, h in zip(axes.flat, heads):
        ax.axis("on")
        ax.imshow(w[h], cmap="viridis", vmin=0, vmax=float(w[h].max()) or 1.0)
        ax.set_title(f"head {h}", fontsize=9)
        if T <= 48:
            ax.set_xticks(range(T), tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(T), tokens, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
