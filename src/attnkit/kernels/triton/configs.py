"""Tile configurations for the Triton kernels.

The tile shape (``block_m`` x ``block_n``) is also the block map's granularity: it
decides which tiles are skipped (EMPTY), computed unmasked (FULL) or masked (PARTIAL),
and the mask lowering is built for it. So it is fixed per call on the host (by head
dim, below), and the autotuner only varies ``num_warps`` / ``num_stages`` -- per kernel
and per compiled variant (head-dim block, mask/bias mode, softcap). The fixed fallback
(``TritonConfig(num_warps=..., num_stages=...)``, or ``ATTNKIT_TRITON_AUTOTUNE=0``) skips
the autotuner. None of these defaults has been measured on a GPU (none was available to
this project when they were written): they follow the Triton FlashAttention tutorial's
choices. Under the interpreter (CPU) warps and stages mean nothing and are not tuned.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["TritonConfig", "tile_shape", "autotune_configs", "AUTOTUNE_KEY", "interpreting",
           "autotune_enabled", "FALLBACK_WARPS", "FALLBACK_STAGES"]

AUTOTUNE_KEY = ["BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV", "SOFTCAP", "BIAS_MODE",
                "MASK_MODE", "EVEN_N"]
FALLBACK_WARPS, FALLBACK_STAGES = 4, 2
INTERPRET_TILE = 16   # under the interpreter: small tiles, so small tests cross many tiles


def _pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class TritonConfig:
    """Tile sizes and launch settings; ``None`` means chosen per call (``tile_shape``) or,
    for warps/stages, autotuned on the GPU. Block sizes: powers of two >= 16."""
    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 16
                                  or not _pow2(v)):
                raise ValueError(f"TritonConfig: {name} must be a power of two >= 16 or None, "
                                 f"got {v!r}")
        for name in ("num_warps", "num_stages"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"TritonConfig: {name} must be a positive int or None, got {v!r}")

    @property
    def fixed_launch(self) -> bool:
        return self.num_warps is not None or self.num_stages is not None


def block_dim(d: int) -> int:
    """Head dim padded to a power of two >= 16 (tl.dot's minimum); the pad is masked."""
    p = 16
    while p < d:
        p *= 2
    return p


def tile_shape(head_dim: int, cfg: TritonConfig, interpret: bool) -> tuple[int, int]:
    """(block_m, block_n) for a head dim (the larger of D and Dv)."""
    if interpret:
        dm = dn = INTERPRET_TILE
    elif head_dim <= 128:
        dm, dn = 128, 64
    else:  # 256: the fp32 accumulators of a 128 x 256 tile would spill
        dm, dn = 64, 32
    return cfg.block_m or dm, cfg.block_n or dn


def autotune_configs(kind: str) -> list:
    import triton
    pairs = [(4, 2), (8, 2), (4, 3), (8, 3)] if kind == "fwd" else [(4, 2), (8, 2)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in pairs]


def interpreting() -> bool:
    """Is the jit package being imported for the interpreter? (The loader sets the
    variable while it imports; see ``attnkit.kernels.triton.kernels``.)"""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled(cfg: TritonConfig) -> bool:
    return not cfg.fixed_launch and os.environ.get("ATTNKIT_TRITON_AUTOTUNE", "1") != "0"
