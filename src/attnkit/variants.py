"""Attention variants by name: the one parser behind ``attnkit bench --variants`` and
``attnkit train --attention``.

Grammar ``NAME[:ARG[:ARG]]``:

===================  ===============================================================
``dense``            full softmax attention (torch SDPA)
``window:W``         local window, W keys back (and W ahead if not causal); tiled
``strided[:S]``      Sparse Transformer strided; S defaults to round(sqrt(n))
``fixed[:S[:C]]``    Sparse Transformer fixed; C summary keys per block
``dilated:W:D``      dilated window, W steps of D
``longformer:W[:G]`` window W each side + G global tokens
``bigbird[:B]``      BigBird with blocks of B (window, global and random blocks)
``logsparse``        LogSparse: keys at distances 0, 1, 2, 4, 8, ...
``linear:F[:M]``     linear attention, F in elu | relu | favor (M random features)
``ssm``              a Mamba-style state-space model: a model, not an attention op
===================  ===============================================================

``strided``, ``fixed`` and ``logsparse`` are causal (as in their papers) whatever the workload.
Softmax variants are exact for their pattern (tested against the reference); patterns
run through :func:`attnkit.patterns.sparse_attention`, whose time follows the pair count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from . import masks as M

__all__ = ["Variant", "parse_variant", "parse_variants", "VARIANT_NAMES"]

VARIANT_NAMES = ("dense", "window", "strided", "fixed", "dilated", "longformer", "bigbird",
                 "logsparse", "linear", "ssm")
_FEATURES = ("elu", "relu", "favor")
# name -> (fewest, most integer arguments, kind); ``linear`` is parsed on its own
_ARITY = {"dense": (0, 0, "softmax"), "window": (1, 1, "sparse"), "strided": (0, 1, "sparse"),
          "bigbird": (0, 1, "sparse"), "fixed": (0, 2, "sparse"), "dilated": (2, 2, "sparse"),
          "longformer": (1, 2, "sparse"), "logsparse": (0, 0, "sparse"), "ssm": (0, 0, "ssm")}


@dataclass(frozen=True)
class Variant:
    """A parsed variant. ``kind``: softmax | sparse | linear | ssm."""
    text: str
    name: str
    args: tuple
    kind: str

    def pattern(self, n: int, causal: bool):
        """The mask spec of a softmax variant for n tokens (None for dense)."""
        from . import patterns as P
        a = self.args
        if self.name == "dense":
            return M.causal() if causal else None
        if self.name == "window":
            return P.local(a[0], causal=causal)
        if self.name == "strided":
            return P.strided(a[0] if a else max(1, round(math.sqrt(n))))
        if self.name == "fixed":
            s = a[0] if a else max(1, round(math.sqrt(n)))
            return P.fixed(s, a[1] if len(a) > 1 else 1)
        if self.name == "dilated":
            return P.dilated(a[0], a[1], causal=causal)
        if self.name == "logsparse":
            return P.log_sparse()
        if self.name == "longformer":
            return P.longformer(a[0], a[1] if len(a) > 1 else 1, causal=causal)
        return P.bigbird(a[0] if a else 64, causal=causal)

    def feature_map(self, dim: int):
        """The feature map of a linear variant for head dim ``dim``: ``"elu"``, ``"relu"``
        or ``FavorPlus(dim, M, seed=0)`` (M defaults to 2 * dim)."""
        if self.kind != "linear":
            raise ValueError(f"variant {self.text!r} is not linear attention (linear:F)")
        if self.args[0] != "favor":
            return self.args[0]
        from .linear import FavorPlus
        return FavorPlus(dim, self.args[1] if len(self.args) > 1 else 2 * dim, seed=0)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
        """Self-attention of this variant on (B, H, n, D) inputs -> (B, H, n, Dv)."""
        from .functional import attention
        if self.kind == "ssm":
            raise ValueError("variant 'ssm' is a model (attnkit.models.SSM), not an attention "
                             "operation; use it with `attnkit train --attention ssm`")
        if self.kind == "linear":
            from .linear import linear_attention
            return linear_attention(q, k, v, self.feature_map(q.shape[-1]), causal=causal)
        n = q.shape[2]
        spec = self.pattern(n, causal)
        if self.kind == "softmax":
            return attention(q, k, v, mask=spec, backend="sdpa")
        from .patterns import sparse_attention
        return sparse_attention(q, k, v, spec)

    def pairs(self, n: int, causal: bool) -> int | None:
        """Attended (query, key) pairs for n tokens; None for linear/ssm."""
        if self.kind in ("linear", "ssm"):
            return None
        if self.name == "dense":
            return n * (n + 1) // 2 if causal else n * n
        spec = self.pattern(n, causal)
        if hasattr(spec, "pairs"):
            return spec.pairs(n)
        return int(spec.dense(n, n).sum()) if n <= 8192 else None

    def __str__(self):
        return self.text


def _ints(name: str, text: str, parts: list[str], lo: int, hi: int) -> tuple:
    if not lo <= len(parts) <= hi:
        want = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"variant {text!r}: {name} takes {want} integer argument(s), got "
                         f"{len(parts)}")
    out = []
    for p in parts:
        try:
            val = int(p)
        except ValueError:
            raise ValueError(f"variant {text!r}: expected an integer argument, got {p!r}") from None
        if val < 1:
            raise ValueError(f"variant {text!r}: arguments must be >= 1, got {val}")
        out.append(val)
    return tuple(out)


def parse_variant(text: str) -> Variant:
    """``"window:256"`` -> Variant. Raises ValueError naming the variant on bad input."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"variant: expected a name like 'window:256', got {text!r}")
    text = text.strip()
    name, *parts = text.split(":")
    name = name.lower()
    if name in _ARITY:
        lo, hi, kind = _ARITY[name]
        return Variant(text, name, _ints(name, text, parts, lo, hi), kind)
    if name == "linear":
        if not parts or parts[0] not in _FEATURES:
            raise ValueError(f"variant {text!r}: expected linear:F with F in "
                             f"{'|'.join(_FEATURES)}, got {':'.join(parts) or 'nothing'}")
        extra = _ints(name, text, parts[1:], 0, 1 if parts[0] == "favor" else 0)
        return Variant(text, name, (parts[0],) + extra, "linear")
    raise ValueError(f"variant {text!r}: unknown name {name!r}; expected one of "
                     f"{', '.join(VARIANT_NAMES)}")


def parse_variants(text: str) -> list[Variant]:
    """A comma-separated list; duplicates refused."""
    out = [parse_variant(t) for t in text.split(",") if t.strip()] if isinstance(text, str) else []
    if not out:
        raise ValueError(f"variants: expected a comma-separated list like 'dense,window:256', "
                         f"got {text!r}")
    seen = set()
    for v in out:
        if v.text in seen:
            raise ValueError(f"variants: {v.text!r} given twice")
        seen.add(v.text)
    return out
