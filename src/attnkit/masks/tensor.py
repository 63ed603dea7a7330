"""Index-based specs (per batch row) and tensor masks.

* ``padding(kv_lengths, q_lengths=None)`` -- keys (and queries) past each row's length;
* ``key_padding(keep)`` -- a Hugging Face style ``attention_mask (B, Tk)``: any keys hidden;
* ``document(ids)`` -- packed sequences: attend within the same document id;
* ``from_tensor(t)`` -- a bool (True = attend) or additive float (-inf = masked) tensor,
  broadcast exactly as :func:`torch.nn.functional.scaled_dot_product_attention`
  broadcasts ``attn_mask``: right-aligned to ``(B, H, Tq, Tk)``, any dimension of size 1
  broadcasts, so ``(Tq, Tk)``, ``(H, Tq, Tk)``, ``(B, 1, 1, Tk)`` (key padding) and
  ``(1, 1, Tq, 1)`` all mean what they mean to SDPA.

Index-based specs use raw indices (no end alignment).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .spec import _TENSOR_SPEC, EMPTY, FULL, PARTIAL, AndMask, MaskSpec, _Combine, coerce

__all__ = ["Padding", "KeyPadding", "Document", "TensorMask", "AdditiveMask", "padding",
           "key_padding", "document", "from_tensor", "as_mask", "split_additive"]


@dataclass(frozen=True, repr=False, eq=False)
class Padding(MaskSpec):
    """Keys (and optionally queries) past each sequence's length are masked."""
    kv_lengths: Tensor | None  # (B,)
    q_lengths: Tensor | None   # (B,)

    def validate(self, B, H, Tq, Tk):
        for name, t, T in (("kv_lengths", self.kv_lengths, Tk), ("q_lengths", self.q_lengths, Tq)):
            if t is None:
                continue
            if t.shape[0] != B:
                raise ValueError(f"padding: {name} must have shape ({B},) to match batch size "
                                 f"B={B}, got {tuple(t.shape)}")
            if int(t.max()) > T:
                raise ValueError(f"padding: {name} must be <= {T}, got {int(t.max())}")

    def extent(self):
        t = self.kv_lengths if self.kv_lengths is not None else self.q_lengths
        return t.shape[0], 1

    def allowed(self, b, h, q, k, offset):
        out = torch.ones_like(b + q + k, dtype=torch.bool)
        if self.kv_lengths is not None:
            out = out & (k < self.kv_lengths[b])
        if self.q_lengths is not None:
            out = out & (q < self.q_lengths[b])
        return out

    def tile_classes(self, q0, q1, k0, k1, offset):
        B = self.extent()[0]
        kv = self.kv_lengths if self.kv_lengths is not None else torch.full((B,), 2**62)
        ql = self.q_lengths if self.q_lengths is not None else torch.full((B,), 2**62)
        kv, ql = kv.cpu().view(-1, 1, 1), ql.cpu().view(-1, 1, 1)
        full = ((k1 <= kv) & (q1 <= ql)).all(0)  # every batch row sees the whole tile
        some = ((k0 < kv) & (q0 < ql)).any(0)    # some batch row sees its first entry
        return torch.where(full, FULL, torch.where(some, PARTIAL, EMPTY))

    def tensors(self):
        return [t for t in (self.kv_lengths, self.q_lengths) if t is not None]

    def to(self, device):
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Padding(mv(self.kv_lengths), mv(self.q_lengths))

    def __repr__(self):
        return "padding(...)"


@dataclass(frozen=True, repr=False, eq=False)
class KeyPadding(MaskSpec):
    """Hide padded keys: ``keep (B, Tk)`` bool, True = a real token (every query, every
    head). Unlike :func:`padding` the real tokens need not be a prefix (left padding)."""
    keep: Tensor  # (B, Tk) bool

    def validate(self, B, H, Tq, Tk):
        if tuple(self.keep.shape) != (B, Tk):
            raise ValueError(f"attention_mask: expected shape (B, Tk) = ({B}, {Tk}), got "
                             f"{tuple(self.keep.shape)}")

    def extent(self):
        return self.keep.shape[0], 1

    def allowed(self, b, h, q, k, offset):
        return self.keep[b, k] & (q == q)                        # (B, 1, tq, tk)

    def tensors(self):
        return [self.keep]

    def to(self, device):
        return KeyPadding(self.keep.to(device))

    def __repr__(self):
        return f"key_padding{tuple(self.keep.shape)}"


@dataclass(frozen=True, repr=False, eq=False)
class Document(MaskSpec):
    """Packed sequences: attend only within the same document id."""
    kv_ids: Tensor        # (B, Tk) or (1, Tk)
    q_ids: Tensor | None  # (B, Tq) or None: queries take kv_ids[..., offset + q]

    def validate(self, B, H, Tq, Tk):
        if self.kv_ids.shape != (B, Tk) and self.kv_ids.shape != (1, Tk):
            raise ValueError(f"document: ids must have shape ({B}, {Tk}) or (1, {Tk}) for "
                             f"B={B}, Tk={Tk}, got {tuple(self.kv_ids.shape)}")
        if self.q_ids is not None and self.q_ids.shape not in ((B, Tq), (1, Tq)):
            raise ValueError(f"document: q_ids must have shape ({B}, {Tq}) or (1, {Tq}), got "
                             f"{tuple(self.q_ids.shape)}")
        if self.q_ids is None and Tq > Tk:
            raise ValueError(f"document: with Tq={Tq} > Tk={Tk} pass q_ids (B, Tq); queries "
                             "cannot take their ids from the keys")

    def extent(self):
        nb = max(self.kv_ids.shape[0], 1 if self.q_ids is None else self.q_ids.shape[0])
        return nb, 1

    def allowed(self, b, h, q, k, offset):
        bk = b if self.kv_ids.shape[0] > 1 else b * 0   # (1, Tk) ids are shared by the batch
        if self.q_ids is None:
            qid = self.kv_ids[bk, q + offset]
        else:
            qid = self.q_ids[b if self.q_ids.shape[0] > 1 else b * 0, q]
        return qid == self.kv_ids[bk, k]

    def tensors(self):
        return [t for t in (self.kv_ids, self.q_ids) if t is not None]

    def to(self, device):
        return Document(self.kv_ids.to(device),
                        None if self.q_ids is None else self.q_ids.to(device))

    def __repr__(self):
        return "document(...)"


class TensorMask(MaskSpec):
    """A bool tensor broadcastable to (B, H, Tq, Tk) as SDPA broadcasts; True = attend."""

    def __init__(self, mask: Tensor):
        self.mask = mask  # 4-D bool (Bm, Hm, Tq or 1, Tk or 1)

    def extent(self):
        return self.mask.shape[0], self.mask.shape[1]

    def validate(self, B, H, Tq, Tk):
        if not all(s in (1, t) for s, t in zip(self.mask.shape, (B, H, Tq, Tk))):
            raise ValueError(f"mask: expected a tensor broadcastable to (B, H, Tq, Tk) = "
                             f"({B}, {H}, {Tq}, {Tk}) (right-aligned, as SDPA's attn_mask), "
                             f"got shape {tuple(self.mask.shape)}")

    def allowed(self, b, h, q, k, offset):
        m = self.mask
        pick = lambda i, d: i if m.shape[d] > 1 else i * 0  # noqa: E731
        return m[pick(b, 0), pick(h, 1), pick(q, 2), pick(k, 3)]

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None):
        m = self.mask
        qs = slice(q0, q1) if m.shape[2] > 1 else slice(0, 1)
        ks = slice(k0, k1) if m.shape[3] > 1 else slice(0, 1)
        t = m[:, :, qs, ks]
        t = t.expand(m.shape[0], m.shape[1], q1 - q0, k1 - k0)
        return t if device is None else t.to(device)

    def tensors(self):
        return [self.mask]

    def to(self, device):
        return TensorMask(self.mask.to(device))

    def __repr__(self):
        return f"from_tensor(bool{tuple(self.mask.shape)})"


class AdditiveMask(TensorMask):
    """A float mask: -inf entries are masked, finite entries are added as a bias."""

    def __init__(self, values: Tensor):
        super().__init__(values != float("-inf"))
        self.values = values

    def to(self, device):
        return AdditiveMask(self.values.to(device))

    def __repr__(self):
        return f"from_tensor(float{tuple(self.values.shape)})"


# ---------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------
def padding(kv_lengths=None, *, q_lengths=None) -> MaskSpec:
    """Per-sequence valid lengths ``(B,)``: keys (and queries, if given) past them are masked.

    Fully masked query rows produce an output of 0.
    """
    if kv_lengths is None and q_lengths is None:
        raise ValueError("padding: give kv_lengths and/or q_lengths, got neither")

    def conv(name, t):
        if t is None:
            return None
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1:
            raise TypeError(f"padding: {name} must be a 1-D integer tensor (B,), got "
                            f"dtype={t.dtype} shape={tuple(t.shape)}")
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"padding: {name} must be >= 0, got {int(t.min())}")
        return t.long()

    return Padding(conv("kv_lengths", kv_lengths), conv("q_lengths", q_lengths))


def key_padding(attention_mask: Tensor) -> MaskSpec:
    """A Hugging Face style ``attention_mask (B, Tk)`` (1/True = real token, any layout:
    left or right padding) as a spec hiding padded keys from every query."""
    if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2:
        raise ValueError(f"attention_mask: expected a (B, T) tensor of 0/1 or bool, got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    return KeyPadding(attention_mask.bool())


def document(ids, q_ids=None) -> MaskSpec:
    """Packed sequences: ``ids`` (B, Tk) gives each key's document; queries attend within
    their document. ``q_ids`` (B, Tq) defaults to the last Tq entries of ``ids``."""
    ids = torch.as_tensor(ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.dtype.is_floating_point:
        raise TypeError(f"document: ids must be an integer tensor (B, Tk) or (Tk,), got "
                        f"dtype={ids.dtype} shape={tuple(ids.shape)}")
    if q_ids is not None:
        q_ids = torch.as_tensor(q_ids)
        if q_ids.dim() == 1:
            q_ids = q_ids.unsqueeze(0)
        q_ids = q_ids.long()
    return Document(ids.long(), q_ids)


def from_tensor(mask: Tensor, name: str = "from_tensor") -> MaskSpec:
    """A tensor as a spec, broadcast as SDPA's ``attn_mask``: right-aligned to
    ``(B, H, Tq, Tk)``, 2 to 4 dims, any size-1 dimension broadcasts (so a 3-D tensor is
    ``(H, Tq, Tk)``; for a batch-first ``(B, Tq, Tk)`` mask pass ``t[:, None]``).

    * bool: True = attend.
    * float (additive): -inf = masked, other (finite) values are added to the scores;
      returns an :class:`AdditiveMask`, which ``attention`` splits into a boolean mask
      and a bias. NaN or +inf raises ValueError.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if not 2 <= mask.dim() <= 4:
        raise ValueError(f"{name}: expected a tensor of 2, 3 or 4 dims broadcastable to "
                         f"(B, H, Tq, Tk) (right-aligned, as SDPA's attn_mask), got shape "
                         f"{tuple(mask.shape)}")
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if m.dtype == torch.bool:
        return TensorMask(m)
    if m.dtype.is_floating_point:
        check_additive(mask, name)
        return AdditiveMask(m)
    raise TypeError(f"{name}: expected a bool or floating-point tensor, got {mask.dtype}")


def check_additive(values: Tensor, name: str) -> None:
    """NaN and +inf have no meaning in an additive mask or bias: refuse them by name.
    Not inside ``torch.compile``: a compiled graph cannot branch on tensor values (T5's
    position bias under ``fullgraph=True``); the same call checks them when run eagerly."""
    if torch.compiler.is_compiling():
        return
    bad = torch.isnan(values) | (values == float("inf"))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        what = "NaN" if bool(torch.isnan(values[idx])) else "+inf"
        raise ValueError(f"{name}: expected finite values or -inf (masked), got {what} at "
                         f"index {idx} of shape {tuple(values.shape)}")


def as_mask(mask, name: str = "mask") -> MaskSpec | None:
    """``None`` / a spec (a sparse pattern is one) / a tensor as a spec (or None)."""
    return None if mask is None else coerce(mask, name)


_TENSOR_SPEC.append(from_tensor)


def split_additive(spec: MaskSpec | None) -> tuple[MaskSpec | None, list[Tensor]]:
    """Separate additive float masks from a spec: (boolean spec, additive tensors).

    Additive masks may be combined with ``&`` only: their values have no meaning under
    ``|`` or ``~``.
    """
    if spec is None:
        return None, []
    if isinstance(spec, AdditiveMask):
        return TensorMask(spec.mask), [torch.where(spec.mask, spec.values, 0.0)]
    if isinstance(spec, AndMask):
        a, ba = split_additive(spec.parts[0])
        c, bc = split_additive(spec.parts[1])
        return AndMask(a, c), ba + bc
    if isinstance(spec, _Combine) and any(_has_additive(p) for p in spec.parts):
        raise TypeError("mask: an additive (float) mask can only be combined with '&'; "
                        f"got {spec!r}")
    return spec, []


def _has_additive(spec: MaskSpec) -> bool:
    if isinstance(spec, AdditiveMask):
        return True
    return isinstance(spec, _Combine) and any(_has_additive(p) for p in spec.parts)
