"""PNG heatmaps for ``attnkit inspect --out`` (matplotlib, optional: ``pip install
matplotlib``): one layer's heads with a shared colour bar and named axes, and for vision
transformers a query's attention over the image's patches."""
from __future__ import annotations

import io
import math

from torch import Tensor

AXES = ("key (attended to)", "query (attending)")


def require_matplotlib(arg: str = "--out") -> None:
    """Raise a one-line error naming ``pip install matplotlib`` if it is missing."""
    from ..core.errors import UsageError
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{arg}: the PNG heatmaps need matplotlib (pip install matplotlib)") \
            from None


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _ticks(ax, labels_x, labels_y, max_labels=48):
    for axis, labels, setter in ((ax.xaxis, labels_x, ax.set_xticks),
                                 (ax.yaxis, labels_y, ax.set_yticks)):
        n = len(labels)
        step = max(1, math.ceil(n / max_labels))
        idx = list(range(0, n, step))
        kw = {"rotation": 90} if axis is ax.xaxis else {}
        setter(idx, [labels[i] for i in idx], fontsize=6 if n > 24 else 7, **kw)


def plot_heads(weights_layer: Tensor, q_labels: list[str], path: str, title: str,
               heads: list[int] | None = None, k_labels: list[str] | None = None,
               subtitles: dict | None = None) -> None:
    """A grid of heatmaps of one layer's weights ``(H, Tq, Tk)`` (or the ``heads``
    chosen), one colour scale (0 .. the largest weight shown) and a colour bar."""
    plt = _plt()
    w = weights_layer.detach().float().cpu()
    H, Tq, Tk = w.shape
    k_labels = q_labels if k_labels is None else k_labels
    heads = list(range(H)) if heads is None else list(heads)
    cols = min(len(heads), 4 if len(heads) <= 16 else 8)
    rows = math.ceil(len(heads) / cols)
    one = len(heads) == 1
    side = 6.5 if one else (3.2 if cols <= 4 else 2.2)
    aspect = min(2.5, max(0.4, Tq / Tk))
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * aspect * rows + 0.9),
                             squeeze=False)
    vmax = float(w[heads].max()) or 1.0
    im = None
    labelled = one or len(heads) <= 16
    for ax in axes.flat:
        ax.axis("off")
    for n, (ax, h) in enumerate(zip(axes.flat, heads)):
        ax.axis("on")
        im = ax.imshow(w[h], cmap="viridis", vmin=0, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        ax.set_title((subtitles or {}).get(h, f"head {h}"), fontsize=9)
        if labelled:      # tokens on the axes, every n-th when long (never bare indices)
            _ticks(ax, k_labels, q_labels, 64 if one else 32)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if n % cols == 0:
            ax.set_ylabel(AXES[1], fontsize=8)
        if n >= len(heads) - cols:
            ax.set_xlabel(AXES[0], fontsize=8)
    _finish(plt, fig, im, title, path)


def _finish(plt, fig, im, title: str, path: str) -> None:
    """Title, one colour bar for the figure, saved as PNG."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.89, 0.97))
    cax = fig.add_axes((0.9, 0.15, 0.015, 0.7))
    fig.colorbar(im, cax=cax).set_label("attention weight", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_patches(weights_layer: Tensor, png: bytes, grid: tuple[int, int], first: int,
                 path: str, title: str, query: int = 0) -> None:
    """Each head's attention from token ``query`` ([CLS] = 0) over the patches, drawn
    over the image, with a colour bar."""
    import numpy as np
    from PIL import Image
    plt = _plt()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    w = weights_layer.detach().float().cpu()                             # (H, T, T)
    H = w.shape[0]
    gh, gw = grid
    maps = w[:, query, first:first + gh * gw].reshape(H, gh, gw)
    vmax = float(maps.max()) or 1.0
    cols = min(H, 4 if H <= 16 else 8)
    rows = math.ceil(H / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 1.0, 2.8 * rows + 0.8),
                             squeeze=False)
    ih, iw = img.shape[:2]
    im = None
    for ax in axes.flat:
        ax.axis("off")
    for ax, h in zip(axes.flat, range(H)):
        ax.imshow(img, extent=(0, iw, ih, 0))
        im = ax.imshow(maps[h], cmap="inferno", alpha=0.6, vmin=0, vmax=vmax,
                       extent=(0, iw, ih, 0), interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
    _finish(plt, fig, im, title, path)
