"""Random masks and biases for the oracle sweep, each with an independent dense form.

Every generator returns what attnkit is given (a spec, a tensor, a bias) together with
the same thing computed here from its *definition* in plain torch -- positions, lengths,
ids, broadcasting written out -- never through attnkit's ``dense``/``tile``/``allowed``.
The sweep's naive fp64 attention uses these, so a mask or bias that attnkit evaluates
wrongly shows up even when every backend agrees with attnkit's own reference.

Conventions (attnkit's documented ones): query ``i`` sits at position
``p = i + (Tk - Tq)``; position specs (causal, window, periodic, dilated, global tokens,
ALiBi) use ``d = p - k``; index specs (padding, key padding, documents, tensors,
mask_mods) use raw indices; tensors broadcast right-aligned to (B, H, Tq, Tk) as SDPA's
``attn_mask``. Dense masks here are bool ``(B, H, Tq, Tk)``; dense biases float64
tensors broadcastable to it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

import attnkit
from attnkit import masks as M

__all__ = ["Geometry", "MaskGen", "BiasRecipe", "random_bias", "my_alibi_slopes", "FLOAT_SHAPES"]


@dataclass(frozen=True)
class Geometry:
    B: int
    H: int
    Tq: int
    Tk: int

    @property
    def d(self) -> Tensor:
        """Aligned distance p - k, (1, 1, Tq, Tk) int64."""
        p = torch.arange(self.Tq) + (self.Tk - self.Tq)
        return (p[:, None] - torch.arange(self.Tk)[None, :]).view(1, 1, self.Tq, self.Tk)

    def grid(self):
        """Raw index grids b, h, q, k broadcastable to (B, H, Tq, Tk)."""
        return (torch.arange(self.B).view(-1, 1, 1, 1), torch.arange(self.H).view(1, -1, 1, 1),
                torch.arange(self.Tq).view(1, 1, -1, 1), torch.arange(self.Tk).view(1, 1, 1, -1))

    def full(self, t: Tensor) -> Tensor:
        return t.expand(self.B, self.H, self.Tq, self.Tk)


def broadcast_shape(r: random.Random, g: Geometry) -> tuple[int, ...]:
    """A random shape of rank 2-4 broadcastable (right-aligned) to (B, H, Tq, Tk)."""
    dims = [r.choice([1, n]) for n in (g.B, g.H, g.Tq, g.Tk)]
    lead = next((i for i, s in enumerate(dims) if s > 1), 4)  # dims before it are 1
    rank = r.randint(max(2, 4 - lead), 4)
    return tuple(dims[4 - rank:])


# the layouts issue 14 names, drawn often on purpose (key padding, per-head, per-query)
FLOAT_SHAPES = ("BH..", "B11k", "Hqk", "qk", "11q1", "1k", "q1", "random")


def float_shape(r: random.Random, g: Geometry) -> tuple[int, ...]:
    kind = r.choice(FLOAT_SHAPES)
    return {"BH..": (g.B, g.H, g.Tq, g.Tk), "B11k": (g.B, 1, 1, g.Tk), "Hqk": (g.H, g.Tq, g.Tk),
            "qk": (g.Tq, g.Tk), "11q1": (1, 1, g.Tq, 1), "1k": (1, g.Tk),
            "q1": (g.Tq, 1)}.get(kind) or broadcast_shape(r, g)


def dense_of(t: Tensor, g: Geometry) -> Tensor:
    """Right-aligned broadcast of a rank 2-4 tensor to (B, H, Tq, Tk), written out."""
    return g.full(t.reshape((1,) * (4 - t.dim()) + tuple(t.shape)))


def _gen(r: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(r.randrange(2**31))


class MaskGen:
    """Random boolean mask compositions for one geometry: ``compose()`` returns
    ``(spec, dense (B, H, Tq, Tk) bool, text)``."""

    LEAVES = ("causal", "window", "window", "periodic", "dilated", "global", "padding",
              "key_padding", "document", "bool_tensor", "mask_mod", "full")

    def __init__(self, r: random.Random, g: Geometry):
        self.r, self.g = r, g

    def compose(self, depth: int = 0):
        r = self.r
        op = r.choices(["leaf", "&", "|", "~", "and_masks"],
                       [3, 2, 2, 1, 0.5] if depth < 3 else [1, 0, 0, 0, 0])[0]
        if op == "leaf":
            return self.leaf()
        if op == "~":
            s, d, t = self.compose(depth + 1)
            return ~s, ~d, f"~({t})"
        (s1, d1, t1), (s2, d2, t2) = self.compose(depth + 1), self.compose(depth + 1)
        if op == "&":
            return s1 & s2, d1 & d2, f"({t1} & {t2})"
        if op == "|":
            return s1 | s2, d1 | d2, f"({t1} | {t2})"
        return M.and_masks(s1, s2), d1 & d2, f"and_masks({t1}, {t2})"

    def leaf(self):
        return getattr(self, "_" + self.r.choice(self.LEAVES))()

    # -- position specs: d = (q + Tk - Tq) - k --------------------------------------
    def _causal(self):
        return M.causal(), self.g.full(self.g.d >= 0), "causal()"

    def _full(self):
        return M.full(), self.g.full(self.g.d == self.g.d), "full()"

    def _window(self):
        r, d = self.r, self.g.d
        left, right = r.randint(0, 24), r.choice([0, 0, r.randint(0, 24)])
        return (M.window(left, right), self.g.full((d <= left) & (d >= -right)),
                f"window({left}, {right})")

    def _periodic(self):
        p = self.r.randint(1, 9)
        return M.periodic(p), self.g.full(self.g.d % p == 0), f"periodic({p})"

    def _dilated(self):
        r, d = self.r, self.g.d
        w, dil, causal = r.randint(0, 8), r.randint(1, 4), r.random() < 0.5
        dd = d if causal else d.abs()
        dense = (dd >= 0) & (dd % dil == 0) & (dd <= w * dil)
        return (M.dilated(w, dil, causal=causal), self.g.full(dense),
                f"dilated({w}, {dil}, causal={causal})")

    def _global(self):
        g, r = self.g, self.r
        idx = r.sample(range(g.Tk), min(g.Tk, r.randint(1, 3)))
        p = torch.arange(g.Tq) + (g.Tk - g.Tq)                    # aligned query positions
        isg = lambda x: torch.tensor([int(i) in idx for i in x.tolist()])  # noqa: E731
        dense = isg(p)[:, None] | isg(torch.arange(g.Tk))[None, :]
        return M.global_tokens(idx), g.full(dense.view(1, 1, g.Tq, g.Tk)), f"global_tokens({idx})"

    # -- index specs (raw indices) ------------------------------------------------------
    def _padding(self):
        g, r = self.g, self.r
        kv = [r.randint(0, g.Tk) for _ in range(g.B)] if r.random() < 0.85 else None
        ql = [r.randint(0, g.Tq) for _ in range(g.B)] if kv is None or r.random() < 0.35 else None
        _, _, qi, ki = g.grid()
        dense = g.full(qi == qi)
        if kv is not None:
            dense = dense & (ki < torch.tensor(kv).view(-1, 1, 1, 1))
        if ql is not None:
            dense = dense & (qi < torch.tensor(ql).view(-1, 1, 1, 1))
        return M.padding(kv, q_lengths=ql), dense, f"padding({kv}, q_lengths={ql})"

    def _key_padding(self):
        g, r = self.g, self.r
        if r.random() < 0.5:   # arbitrary keep pattern
            keep = torch.rand(g.B, g.Tk, generator=_gen(r)) < r.choice([0.3, 0.7, 0.95])
            how = "random"
        else:                  # left padding: the first n_b keys of row b are padding
            n = [r.randint(0, g.Tk) for _ in range(g.B)]
            keep = torch.arange(g.Tk)[None, :] >= torch.tensor(n)[:, None]
            how = f"left{n}"
        arg = keep.long() if r.random() < 0.5 else keep            # HF's 0/1 ints or bool
        dense = g.full(keep.view(g.B, 1, 1, g.Tk))
        return M.key_padding(arg), dense, f"key_padding({how})"

    def _document(self):
        g, r = self.g, self.r
        ndoc, gen = r.randint(1, 4), _gen(r)
        nb = r.choice([g.B, g.B, 1])
        ids = torch.randint(0, ndoc, (nb, g.Tk), generator=gen)
        if r.random() < 0.7:
            ids = torch.sort(ids, dim=1).values                     # packed sequences
        q_ids = None
        if g.Tq > g.Tk or r.random() < 0.4:
            q_ids = torch.randint(0, ndoc, (g.B, g.Tq), generator=gen)
        kid = ids.expand(g.B, g.Tk)
        if q_ids is None:   # queries take the ids of their aligned positions
            qid = kid[:, g.Tk - g.Tq:]
        else:
            qid = q_ids
        dense = g.full((qid[:, :, None] == kid[:, None, :]).view(g.B, 1, g.Tq, g.Tk))
        arg = ids[0] if nb == 1 and r.random() < 0.5 else ids      # (Tk,) is accepted too
        return (M.document(arg, q_ids), dense,
                f"document(ids{tuple(arg.shape)}, q_ids={None if q_ids is None else 'B,Tq'})")

    def _bool_tensor(self):
        g, r = self.g, self.r
        shape = broadcast_shape(r, g)
        t = torch.rand(shape, generator=_gen(r)) < r.choice([0.2, 0.6, 0.9])
        return M.from_tensor(t), dense_of(t, g), f"from_tensor(bool{shape})"

    def _mask_mod(self):
        g, r = self.g, self.r
        kind = r.choice(["mod", "block", "head", "batch"])
        b, h, q, k = g.grid()
        if kind == "mod":
            m, res = r.randint(2, 4), r.randint(0, 1)
            fn = lambda b, h, q, k: (q + k) % m != res  # noqa: E731
            spec = M.from_mask_mod(fn)
            text = f"mask_mod((q+k)%{m}!={res})"
        elif kind == "block":
            bs = r.randint(1, 9)
            fn = lambda b, h, q, k: (q // bs) >= (k // bs)  # noqa: E731
            spec, text = M.from_mask_mod(fn), f"mask_mod(block_causal {bs})"
        elif kind == "head":
            fn = lambda b, h, q, k: ((h % 2) == 0) | (k <= q)  # noqa: E731
            spec, text = M.from_mask_mod(fn, heads=g.H), "mask_mod(even heads full | k<=q)"
        else:
            keep = torch.rand(g.B, g.Tk, generator=_gen(r)) < 0.6
            fn = lambda b, h, q, k: keep[b, k] & (q >= 0)  # noqa: E731
            spec, text = M.from_mask_mod(fn, batch_size=g.B), "mask_mod(keep[b, k])"
        return spec, g.full(fn(b, h, q, k)), text


# ---------------------------------------------------------------------------
# biases and additive masks
# ---------------------------------------------------------------------------
def my_alibi_slopes(n: int) -> Tensor:
    """ALiBi slopes from the paper's definition (2^(-8i/n); a non-power-of-two n takes
    the closest lower power's slopes, then every other slope of the next power)."""
    def geo(m):
        return [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]
    p = 1 << (n.bit_length() - 1)
    s = geo(p) if p == n else geo(p) + geo(2 * p)[0::2][: n - p]
    return torch.tensor(s, dtype=torch.float64)


@dataclass
class BiasRecipe:
    """A bias (or an additive mask) built from leaf tensors: ``build(tensors)`` is what
    attnkit is given, ``dense(tensors64)`` the float64 definition (broadcastable to
    (B, H, Tq, Tk)); ``grad`` marks the tensors whose gradient is compared."""
    tensors: list
    build: Callable
    dense: Callable
    grad: list
    text: str


def random_tensor(r: random.Random, g: Geometry, *, neg_inf: float = 0.0) -> Tensor:
    shape = float_shape(r, g)
    t = torch.randn(shape, generator=_gen(r))
    if neg_inf:
        t = t.masked_fill(torch.rand(shape, generator=_gen(r)) < neg_inf, -math.inf)
    return t


def random_bias(r: random.Random, g: Geometry) -> BiasRecipe | None:
    """None, ALiBi, a tensor bias (any broadcast layout; rarely with -inf entries), or a
    sum of those (``alibi + tensor``, lists)."""
    kind = r.choices(["none", "alibi", "tensor", "alibi+tensor", "list", "spec"],
                     [4, 2, 3, 1, 1, 1])[0]
    if kind == "none":
        return None
    H = g.H
    slopes = my_alibi_slopes(H).view(1, H, 1, 1)
    alibi_dense = -slopes * g.d.abs().double()                       # (1, H, Tq, Tk)
    if kind == "alibi":
        return BiasRecipe([], lambda ts: attnkit.alibi(H), lambda ts: alibi_dense, [], "alibi")
    ninf = r.choice([0.0, 0.0, 0.0, 0.1, 0.5])
    n = 2 if kind == "list" else 1
    ts = [random_tensor(r, g, neg_inf=ninf if i == 0 else 0.0) for i in range(n)]
    grad = [r.random() < 0.6 for _ in ts]
    shapes = ", ".join(str(tuple(t.shape)) for t in ts)
    text = f"{kind}[{shapes}]" + (f" -inf p={ninf}" if ninf else "")
    if kind == "tensor":
        return BiasRecipe(ts, lambda ts: ts[0], lambda ts: ts[0], grad, text)
    if kind == "spec":
        return BiasRecipe(ts, lambda ts: attnkit.call.bias.tensor_bias(ts[0]), lambda ts: ts[0],
                          grad, text)
    if kind == "alibi+tensor":
        return BiasRecipe(ts, lambda ts: attnkit.alibi(H) + ts[0],
                          lambda ts: alibi_dense + dense_of(ts[0], g), grad, text)
    return BiasRecipe(ts, lambda ts: [ts[0], ts[1]],
                      lambda ts: dense_of(ts[0], g) + dense_of(ts[1], g), grad, text)


def random_additive(r: random.Random, g: Geometry) -> BiasRecipe:
    """An additive float mask (-inf = masked, finite values added), any broadcast layout
    incl. (B, 1, 1, Tk) key padding and (H, Tq, Tk) per head."""
    t = random_tensor(r, g, neg_inf=r.choice([0.05, 0.3, 0.6]))
    raw = r.random() < 0.3   # passed as a plain tensor instead of from_tensor(...)
    return BiasRecipe([t], (lambda ts: ts[0]) if raw else (lambda ts: M.from_tensor(ts[0])),
                      lambda ts: ts[0], [r.random() < 0.4],
                      f"additive{tuple(t.shape)}{' raw' if raw else ''}")
