"""Per-head evidence for the recommendation, from the dense run's attention weights.

For every layer and head, averaged over the text's windows (each query row sums to 1):

* ``mass_within[w]``: attention mass within ``w`` tokens of the query -- what
  ``window:w`` keeps (both sides for an encoder, ``w`` back for a decoder, as
  ``window:W`` is defined); ``reach90``: the smallest such ``w`` keeping 90%;
* ``first``, ``last``: mean mass on the first and the last key (BERT's ``[CLS]`` /
  ``[SEP]``, a decoder's first token): the "sinks" a window misses;
* ``kept[variant]``: mass inside each sparse variant's pattern (window, bigbird,
  strided, ...), i.e. how much of the real attention it keeps.

A head is **local** when ``reach90 <= LOCAL_REACH`` tokens and a **sink head** when at
least ``SINK_MASS`` of its mass goes to one key position (mean over queries).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["HeadStats", "LOCAL_REACH", "SINK_MASS", "window_grid"]

LOCAL_REACH = 8
SINK_MASS = 0.5


def window_grid(n: int, extra=()) -> list[int]:
    """0, 1, 2, 4, ... up to n - 1, plus the window sizes in ``extra``."""
    ws = {0, n - 1} | {w for w in extra if 0 <= w < n}
    w = 1
    while w < n:
        ws.add(w)
        w *= 2
    return sorted(ws)


class HeadStats:
    """Accumulate per-head statistics over windows of one length ``n``."""

    def __init__(self, n: int, n_layers: int, n_heads: int, causal: bool):
        self.n, self.L, self.H, self.causal = n, n_layers, n_heads, causal
        self.by_dist = torch.zeros(n_layers, n_heads, n, dtype=torch.float64)
        self.first = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.last = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.top = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self.kept: dict[str, Tensor] = {}
        self.windows = 0
        i = torch.arange(n)
        d = (i[:, None] - i[None, :])                                         # (T, T) i - j
        self.dist = d.abs() if not causal else d.clamp_min(0)
        # a decoder's weights are 0 above the diagonal, so clamping loses nothing

    def add(self, weights: dict[int, Tensor], new_window: bool = True) -> None:
        """One window's dense weights ``{layer: (H, T, T)}`` (all layers, or a chunk of
        them with ``new_window=False`` after the first chunk)."""
        self.windows += bool(new_window)
        T = self.n
        idx = self.dist.reshape(1, -1).expand(self.H, -1)
        for layer, w in weights.items():
            w = w.double()                                                    # (H, T, T)
            hist = torch.zeros(self.H, T, dtype=torch.float64)
            hist.scatter_add_(1, idx, w.reshape(self.H, -1))
            self.by_dist[layer] += hist / T
            col = w.mean(1)                                                   # (H, Tk)
            self.first[layer] += col[:, 0]
            self.last[layer] += col[:, -1]
            self.top[layer] += col.max(-1).values

    def add_pattern(self, name: str, weights: dict[int, Tensor],
                    masks: dict[int, Tensor | None]) -> None:
        """Mass of one window's dense weights inside a variant's pattern, per layer
        (``masks[layer]``: bool ``(Hm, T, T)``, None = everything allowed)."""
        acc = self.kept.setdefault(name, torch.zeros(self.L, self.H, dtype=torch.float64))
        for layer, w in weights.items():
            m = masks[layer]
            if m is None:
                acc[layer] += 1.0
            else:
                acc[layer] += (w.double() * m.to(torch.float64)).sum(-1).mean(-1)

    def result(self, windows_of_interest=()) -> dict:
        k = max(self.windows, 1)
        cum = (self.by_dist / k).cumsum(-1)                                   # (L, H, n)
        grid = window_grid(self.n, windows_of_interest)
        within = cum[:, :, grid]                                              # (L, H, G)
        reach = (cum >= 0.9).float().argmax(-1)                               # (L, H)
        first, last, top = self.first / k, self.last / k, self.top / k
        layers = []
        for layer in range(self.L):
            sinks = [h for h in range(self.H) if float(top[layer, h]) >= SINK_MASS]
            local = [h for h in range(self.H) if int(reach[layer, h]) <= LOCAL_REACH]
            row = {"layer": layer, "local_heads": local, "sink_heads": sinks,
                   "first_mass": float(first[layer].mean()), "last_mass": float(last[layer].mean()),
                   "mass_within": {str(w): float(within[layer, :, j].mean())
                                   for j, w in enumerate(grid)},
                   "kept": {name: {"mean": float(v[layer].mean() / k),
                                   "min": float(v[layer].min() / k),
                                   "min_head": int(v[layer].argmin())}
                            for name, v in self.kept.items()}}
            layers.append(row)
        heads = [{"layer": layer, "head": h, "reach90": int(reach[layer, h]),
                  "first": float(first[layer, h]), "last": float(last[layer, h]),
                  "top_key_mass": float(top[layer, h]),
                  "mass_within": [float(x) for x in within[layer, h]],
                  "kept": {name: float(v[layer, h] / k) for name, v in self.kept.items()}}
                 for layer in range(self.L) for h in range(self.H)]
        return {"n": self.n, "windows": self.windows, "grid": grid, "causal": self.causal,
                "local_reach": LOCAL_REACH, "sink_mass": SINK_MASS, "layers": layers,
                "heads": heads}
