"""The object ``attnkit``'s mask interface returns to transformers: an attnkit spec that
reads like the dense mask transformers' own interface would have returned.

Model code and users read the mask they get from ``create_causal_mask`` & co.
(``.ndim``, ``.shape``, ``.dtype``, ``mask[0, 0, i, j]``). :class:`HFMask` answers those
reads as the ``(B, 1, Tq, Tk)`` tensor of ``sdpa_mask`` (boolean, True = attend) -- or of
``eager_mask`` (float, 0 / dtype-min) where attnkit stands in for "eager" -- built lazily
on the first read that needs values and cached; the attention function never reads it:
:func:`~attnkit.integrations.hf.attention.call_mask` takes :attr:`HFMask.spec`, so the
kernels keep the structure. Any other tensor use (arithmetic, ``torch.*`` functions,
``.to``, ``.float()``...) raises a TypeError naming the mask and :meth:`HFMask.dense`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...masks import MaskSpec

__all__ = ["HFMask", "as_spec"]


class HFMask:
    """``spec`` for the kernels, the dense mask for readers. ``reads_as``: "sdpa" (bool)
    or "eager" (float ``dtype``, 0 where attended, ``finfo(dtype).min`` elsewhere)."""

    __slots__ = ("spec", "_args", "_reads_as", "_dtype", "_device", "_dense")

    def __init__(self, spec: MaskSpec, args: dict, reads_as: str = "sdpa",
                 dtype: torch.dtype = torch.float32):
        if reads_as not in ("sdpa", "eager"):
            raise ValueError(f"reads_as: expected 'sdpa' or 'eager', got {reads_as!r}")
        self.spec, self._args, self._reads_as = spec, args, reads_as
        self._dtype = torch.bool if reads_as == "sdpa" else dtype
        self._device = torch.device(args.get("device", "cpu"))
        self._dense = None

    # -- the reads of a (B, 1, Tq, Tk) tensor ---------------------------------------------
    @property
    def shape(self) -> torch.Size:
        a = self._args
        return torch.Size((a["batch_size"], 1, a["q_length"], a["kv_length"]))

    @property
    def ndim(self) -> int:
        return 4

    def dim(self) -> int:
        return 4

    def size(self, d: int | None = None):
        return self.shape if d is None else self.shape[d]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def dense(self) -> Tensor:
        """The ``(B, 1, Tq, Tk)`` tensor transformers' ``sdpa_mask`` (or ``eager_mask``)
        builds for this call, never skipped as None (built once, then cached)."""
        if self._dense is None:
            from transformers import masking_utils as mu
            kw = dict(self._args, allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
            if self._reads_as == "eager":
                self._dense = mu.eager_mask(**kw, dtype=self._dtype)
            else:
                self._dense = mu.sdpa_mask(**kw)
        return self._dense

    def __getitem__(self, index) -> Tensor:
        return self.dense()[index]

    def __repr__(self) -> str:
        return (f"HFMask({self.spec!r}, reads as a {tuple(self.shape)} {self._dtype} "
                f"tensor like transformers' {self._reads_as}_mask)")

    # -- everything else a tensor does: refused by name -----------------------------------
    def _refuse(self, what: str):
        return TypeError(
            f"{what}: the attention mask is an attnkit HFMask (a structured mask spec "
            f"standing for a {tuple(self.shape)} {self._dtype} tensor), which supports only "
            f"reads (.shape, .ndim, .dtype, .device, indexing); call mask.dense() for the "
            f"tensor transformers' {self._reads_as}_mask would build, or mask.spec for the "
            f"attnkit spec")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        mask = next(a for a in (*args, *(kwargs or {}).values()) if isinstance(a, cls))
        raise mask._refuse(getattr(func, "__name__", str(func)))

    def __getattr__(self, name: str):
        if name.startswith("__") or not hasattr(Tensor, name):
            raise AttributeError(f"'HFMask' object has no attribute {name!r}")
        raise self._refuse(f".{name}")

    def __bool__(self):
        raise self._refuse("bool()")

    def __array__(self, *a, **k):
        raise self._refuse("numpy conversion")

    def __eq__(self, other):      # identity for None / masks; by value would be a tensor
        if other is None or isinstance(other, HFMask):
            return self is other
        raise self._refuse("==")

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = object.__hash__


def _refused(name: str):
    def op(self, *args):
        raise self._refuse(name)
    op.__name__ = name
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
           "lt", "le", "gt", "ge", "matmul"):
    for _f in (f"__{_n}__", f"__r{_n}__"):
        setattr(HFMask, _f, _refused(_f))
for _f in ("__invert__", "__neg__", "__pos__", "__abs__", "__iter__", "__float__", "__int__"):
    setattr(HFMask, _f, _refused(_f))
del _n, _f


def as_spec(mask):
    """The attnkit spec behind a mask object (unchanged if it is not an :class:`HFMask`)."""
    return mask.spec if isinstance(mask, HFMask) else mask
