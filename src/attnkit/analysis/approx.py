"""What sparse patterns and linear attention trade: relative error vs full softmax.

For each variant (by name, :mod:`attnkit.engine.variants`: a named sparse pattern run by
:func:`attnkit.sparse_attention`, or linear attention with a feature map) and each input
kind, the relative error ``||out - ref||_F / ||ref||_F`` against full softmax attention (the
``reference`` backend, float64) with the same causality, on the same inputs:

* ``random``: q, k, v ~ N(0, 1);
* ``near``:   query i matches key i - 1 sharply (a local dependency);
* ``far``:    query i matches key i // 2 sharply (distance i/2: outside local windows).

"Matches sharply": keys are random unit directions (times sqrt(D)), query i is
``sharpness`` times the unit direction of its key, so full attention puts almost all
weight (~95% at n=1024) on that key. Sparse patterns are exact where the key is in the
pattern and miss it otherwise; linear attention blurs it.

    python -m attnkit.analysis.approx            # n = 256, 1024
    python -m attnkit.analysis.approx --n 512 --seed 1
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .. import masks
from ..engine.functional import attention
from ..engine.variants import parse_variant

__all__ = ["Approximation", "Row", "INPUTS", "make_inputs", "default_variants", "report",
           "to_markdown", "main"]

INPUTS = ("random", "near", "far")


@dataclass(frozen=True)
class Approximation:
    """A variant at one setting: ``run(q, k, v) -> out``; ``density`` = pairs / n² or None."""
    name: str
    causal: bool
    run: Callable[[Tensor, Tensor, Tensor], Tensor]
    density: float | None = None


@dataclass(frozen=True)
class Row:
    variant: str
    input: str
    n: int
    density: float | None
    rel_error: float


def make_inputs(kind: str, n: int, *, heads: int = 2, dim: int = 32, sharpness: float = 12.0,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (1, heads, n, dim) float64 for an input ``kind`` in :data:`INPUTS`."""
    if kind not in INPUTS:
        raise ValueError(f"kind: expected one of {INPUTS}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    g = torch.Generator().manual_seed(seed)
    shape = (1, heads, n, dim)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "random":
        return (torch.randn(shape, generator=g, dtype=torch.float64),
                torch.randn(shape, generator=g, dtype=torch.float64), v)
    unit = torch.nn.functional.normalize(torch.randn(shape, generator=g, dtype=torch.float64),
                                         dim=-1)
    i = torch.arange(n)
    target = (i - 1).clamp(min=0) if kind == "near" else i // 2
    # score(i, j) = scale * q_i . k_j = sharpness * cos(unit_target(i), unit_j)
    return sharpness * unit[:, :, target], unit * math.sqrt(dim), v


def default_variants(n: int, *, dim: int = 32) -> list[Approximation]:
    """The patterns and feature maps compared (variant names with parameters scaled to n,
    and whether the comparison is causal)."""
    s = max(1, math.isqrt(n))
    settings = [(f"window:{max(1, n // 16)}", True), (f"window:{max(1, n // 32)}", False),
                (f"strided:{s}", True), (f"fixed:{s}", True), (f"dilated:{max(1, n // 64)}:4", True),
                (f"longformer:{max(1, n // 32)}:2", False), (f"bigbird:{max(4, n // 32)}", False),
                ("logsparse", True), ("linear:elu", True), ("linear:relu", True),
                ("linear:favor:64", True), ("linear:favor:256", True), ("linear:elu", False)]
    out = []
    for text, causal in settings:
        v = parse_variant(text)
        if v.is_linear:
            fm = v.feature_map(dim)
            name = f"linear {fm}" + (", causal" if causal else "")
            density = None
        else:
            pattern = v.pattern(n, causal)
            name, density = pattern.name, pattern.density(n)
        out.append(Approximation(name, causal, lambda q, k, v, var=v, c=causal:
                                 var.attend(q, k, v, causal=c), density))
    return out


def report(ns: Sequence[int] = (256, 1024), inputs: Sequence[str] = INPUTS, *,
           variants: Callable[[int], list[Approximation]] | None = None, seed: int = 0,
           dim: int = 32) -> list[Row]:
    """One :class:`Row` per (n, input kind, variant)."""
    rows = []
    for n in ns:
        vs = (variants or (lambda n: default_variants(n, dim=dim)))(n)
        for kind in inputs:
            q, k, v = make_inputs(kind, n, dim=dim, seed=seed)
            refs = {c: attention(q, k, v, mask=masks.causal() if c else None,
                                 backend="reference") for c in (False, True)}
            for var in vs:
                ref = refs[var.causal]
                err = float((var.run(q, k, v) - ref).norm() / ref.norm())
                rows.append(Row(var.name, kind, n, var.density, err))
    return rows


def to_markdown(rows: Sequence[Row]) -> str:
    """One table per n: variant, density, then the relative error per input kind."""
    parts = []
    for n in dict.fromkeys(r.n for r in rows):
        sub = [r for r in rows if r.n == n]
        kinds = list(dict.fromkeys(r.input for r in sub))
        names = list(dict.fromkeys(r.variant for r in sub))
        err = {(r.variant, r.input): r for r in sub}
        lines = [f"n = {n}", "",
                 "| variant | density | " + " | ".join(f"{k} rel. err" for k in kinds) + " |",
                 "|---|---:|" + "---:|" * len(kinds)]
        for name in names:
            d = next(err[(name, k)].density for k in kinds if (name, k) in err)
            cells = [f"{err[(name, k)].rel_error:.3g}" if (name, k) in err else "" for k in kinds]
            lines.append(f"| {name} | {'-' if d is None else f'{d:.3f}'} | "
                         + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m attnkit.analysis.approx",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1024], help="sequence lengths")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(to_markdown(report(args.n, seed=args.seed)))


if __name__ == "__main__":
    main()
