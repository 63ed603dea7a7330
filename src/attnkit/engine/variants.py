"""Attention variants by name: the one grammar behind ``attnkit bench --variants``,
``attnkit train --attention`` and the Hugging Face integration's ``attnkit:<variant>``.

Grammar ``NAME[:ARG[:ARG]]``:

===================  ===============================================================
``dense``            full softmax attention
``window:W``         sliding window, W keys back (and W ahead if not causal)
``strided[:S]``      Sparse Transformer strided; S defaults to round(sqrt(n))
``fixed[:S[:C]]``    Sparse Transformer fixed; C summary keys per block
``dilated:W:D``      dilated window, W steps of D
``longformer:W[:G]`` window W each side + G global tokens
``bigbird[:B]``      BigBird with blocks of B (window, global and random blocks)
``logsparse``        LogSparse: keys at distances 0, 1, 2, 4, 8, ...
``linear:F[:M]``     linear attention, F in elu | relu | favor (M random features) |
                     hedgehog (a learnable per-head map, Zhang et al. 2024: its weights
                     live in the model, :class:`attnkit.linear.HedgehogFeatureMap`)
``gqa:N``            grouped-query attention: the K/V heads mean-pooled into N groups
                     (Ainslie et al. 2023; N = 1 is MQA), softmax attention otherwise
``ssm``              a Mamba-style state-space model: a model, not an attention op
===================  ===============================================================

The sparse names are :data:`attnkit.sparse.PATTERNS` (one table). ``strided``, ``fixed``
and ``logsparse`` are causal (as in their papers) whatever the workload. Softmax variants
are exact for their pattern (tested against the reference). ``linear:hedgehog`` and
``gqa:N`` are *learned* (:attr:`Variant.learned`): a model runs them after
``attnkit adapt`` fits their parameters (the feature maps; the pooled K/V projections).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import masks as M
from ..sparse.registry import PATTERNS, build_pattern

__all__ = ["Variant", "parse_variant", "parse_variants", "VARIANT_NAMES", "pool_heads"]

VARIANT_NAMES = ("dense", *PATTERNS, "linear", "gqa", "ssm")
_FEATURES = ("elu", "relu", "favor", "hedgehog")


@dataclass(frozen=True)
class Variant:
    """A parsed variant. ``kind``: softmax | sparse | linear | gqa | ssm; callers ask the
    properties below (and :meth:`attention_only`) rather than compare ``kind``."""
    text: str
    name: str
    args: tuple
    kind: str

    @property
    def is_dense(self) -> bool:
        """Full softmax attention (the model as trained)."""
        return self.name == "dense"

    @property
    def is_sparse(self) -> bool:
        """A named sparse pattern (softmax over the pattern's pairs)."""
        return self.kind == "sparse"

    @property
    def is_linear(self) -> bool:
        """Linear attention (a feature map, no scores)."""
        return self.kind == "linear"

    @property
    def is_gqa(self) -> bool:
        """Dense softmax attention over K/V heads mean-pooled into groups (``gqa:N``)."""
        return self.kind == "gqa"

    @property
    def is_model(self) -> bool:
        """A whole model (the SSM), not an attention operation."""
        return self.kind == "ssm"

    def attention_only(self, where: str) -> "Variant":
        """``self``, or the one refusal of a model variant (``ssm``) where an attention
        operation is needed; ``where`` names the argument (``--variants``, ...)."""
        if self.is_model:
            raise ValueError(f"{where}: variant {self.text!r} is a model (attnkit.models.SSM), "
                             "not an attention operation; use it with `attnkit train "
                             "--attention ssm` (or compare it: `attnkit train --sweep "
                             "--variants ...,ssm`)")
        return self

    def pattern(self, n: int, causal: bool):
        """The mask of a softmax/sparse variant for n tokens: None (dense, bidirectional),
        ``causal()``, or an :class:`attnkit.sparse.Pattern`."""
        if self.is_linear or self.is_model or self.is_gqa:
            raise ValueError(f"variant {self.text!r} is not a softmax attention pattern")
        if self.is_dense:
            return M.causal() if causal else None
        return build_pattern(self.name, self.args, n, causal)

    @property
    def learned(self) -> bool:
        """Does the variant have parameters of its own to fit (``attnkit adapt``)?"""
        return self.is_gqa or (self.is_linear and self.args[0] == "hedgehog")

    def feature_map(self, dim: int):
        """The feature map of a linear variant for head dim ``dim``: ``"elu"``, ``"relu"``
        or ``FavorPlus(dim, M, seed=0)`` (M defaults to 2 * dim)."""
        if not self.is_linear:
            raise ValueError(f"variant {self.text!r} is not linear attention (linear:F)")
        if self.args[0] == "hedgehog":
            raise ValueError(f"variant {self.text!r}: a learnable feature map has per-head "
                             "weights that live in a model (attnkit.linear.HedgehogFeatureMap);"
                             " fit them with `attnkit adapt`")
        if self.args[0] != "favor":
            return self.args[0]
        from ..linear import FavorPlus
        return FavorPlus(dim, self.args[1] if len(self.args) > 1 else 2 * dim, seed=0)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
        """Self-attention of this variant on (B, H, n, D) inputs -> (B, H, n, Dv)."""
        from .functional import attention
        self.attention_only("variant")
        if self.is_linear:
            from ..linear import linear_attention
            return linear_attention(q, k, v, self.feature_map(q.shape[-1]), causal=causal)
        if self.is_gqa:
            k, v = pool_heads(k, self.args[0]), pool_heads(v, self.args[0])
            return attention(q, k, v, mask=M.causal() if causal else None, backend="sdpa")
        spec = self.pattern(q.shape[2], causal)
        if not self.is_sparse:
            return attention(q, k, v, mask=spec, backend="sdpa")
        return attention(q, k, v, mask=spec, backend="tiled")  # at the pattern's pair cost

    def pairs(self, n: int, causal: bool) -> int | None:
        """Attended (query, key) pairs for n tokens; None for linear/ssm."""
        if self.is_linear or self.is_model:
            return None
        if self.is_dense or self.is_gqa:
            return n * (n + 1) // 2 if causal else n * n
        return self.pattern(n, causal).pairs(n)

    def __str__(self):
        return self.text


def pool_heads(x: Tensor, groups: int) -> Tensor:
    """Mean-pool K or V heads into ``groups``: (B, Hkv, T, D) -> (B, groups, T, D), head
    group g = heads g*Hkv/groups ... (g+1)*Hkv/groups - 1 (query head h then reads group
    h // (H / groups), as GQA does)."""
    B, Hkv, T, D = x.shape
    if groups > Hkv or Hkv % groups:
        raise ValueError(f"variant 'gqa:{groups}': the model has {Hkv} key/value heads per "
                         f"layer, which {groups} groups do not divide evenly")
    if groups == Hkv:
        return x
    return x.view(B, groups, Hkv // groups, T, D).mean(2)


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
    if name in ("dense", "ssm"):
        return Variant(text, name, _ints(name, text, parts, 0, 0),
                       "softmax" if name == "dense" else "ssm")
    if name in PATTERNS:
        e = PATTERNS[name]
        return Variant(text, name, _ints(name, text, parts, e.min_args, e.max_args), "sparse")
    if name == "linear":
        if not parts or parts[0] not in _FEATURES:
            raise ValueError(f"variant {text!r}: expected linear:F with F in "
                             f"{'|'.join(_FEATURES)}, got {':'.join(parts) or 'nothing'}")
        extra = _ints(name, text, parts[1:], 0, 1 if parts[0] == "favor" else 0)
        return Variant(text, name, (parts[0],) + extra, "linear")
    if name == "gqa":
        return Variant(text, name, _ints(name, text, parts, 1, 1), "gqa")
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
