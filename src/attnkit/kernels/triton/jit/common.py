"""What the forward, dQ and dK/dV kernels share: one tile's scores, capped, biased, masked.

Order of operations (as in ``attnkit.call.bias``): ``s = qk * scale``, ``s = cap * tanh(s /
cap)`` if softcapped, ``s += bias``, masked entries ``-inf``. The result is returned in
base 2 (times log2 e) so the softmax uses ``exp2``; the saved log-sum-exp is in base 2 too.

Mask modes (``MASK_MODE``, fixed per call by ``lowering.py``): 0 no mask (every tile FULL);
1 the window predicate ``win_lo <= (q + off) - k <= win_hi`` evaluated in the kernel
(causal and sliding windows); 2 a tile-local boolean mask gathered per PARTIAL tile,
indexed by slot, batch and head (strides 0 where the mask does not depend on them).
FULL tiles are never masked (except keys past ``Tk`` when ``EVEN_N`` is false).

Bias modes (``BIAS_MODE``): 0 none; 1 ALiBi from per-head slopes, ``-slope_h * |q + off -
k|``; 2 a dense float32 bias tensor read with its (broadcast) strides.
"""
import triton
import triton.language as tl

from attnkit.kernels.triton import configs

LOG2E: tl.constexpr = 1.4426950408889634
PARTIAL: tl.constexpr = 1
INTERPRET: tl.constexpr = configs.interpreting()


@triton.jit
def row_max(x):
    """tl.max(x, 1). The kernels call triton.language *builtins* only: tl.max, tl.sum and
    tl.zeros are @jit functions of Triton's standard library, decorated (for the GPU or
    the interpreter) when triton is first imported, so they fail under the interpreter
    if triton was imported without TRITON_INTERPRET=1. tl.reduce with the standard
    combine functions is what tl.max / tl.sum compile to, and the interpreter maps
    those combine functions to numpy."""
    return tl.reduce(x, 1, tl.standard._elementwise_max)


@triton.jit
def row_sum(x):
    """tl.sum(x, 1) for float32 x (see row_max)."""
    return tl.reduce(x, 1, tl.standard._sum_combine)


@triton.jit
def dot(a, b):
    """a @ b with float32 accumulation; float32 operands in IEEE precision (no TF32).
    Under the interpreter bfloat16 operands are widened first: Triton 3.9's interpreter
    multiplies their raw bit patterns (uint16) in tl.dot. The widening is exact (a
    bf16 x bf16 product fits float32), so the interpreter's result equals the GPU's
    up to summation order."""
    if INTERPRET and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def tanh(x):
    """tanh from exp2 (tl has no portable tanh across Triton 3.x): saturates, never NaN."""
    e = tl.exp2(x * (-2.0 * LOG2E) * tl.where(x >= 0, 1.0, -1.0))  # exp(-2|x|) in (0, 1]
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def tile_scores(qk, offs_m, offs_n, b, h, kind, slot, Tq, Tk, off, scale, cap,
                slopes_ptr, bias_ptr, sb_b, sb_h, sb_q, sb_k,
                tiles_ptr, st_slot, st_b, st_h, win_lo, win_hi,
                SOFTCAP: tl.constexpr, BIAS_MODE: tl.constexpr, MASK_MODE: tl.constexpr,
                EVEN_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """qk (BLOCK_M, BLOCK_N) float32 -> (scores in base 2 with -inf where masked,
    tanh(scaled qk / cap) for the softcap's derivative; qk itself when not capped)."""
    if SOFTCAP:
        th = tanh(qk * (scale / cap))
        s = th * (cap * LOG2E)
    else:
        th = qk
        s = qk * (scale * LOG2E)
    if BIAS_MODE == 1:
        slope = tl.load(slopes_ptr + h)
        dist = tl.abs((offs_m[:, None] + off) - offs_n[None, :]).to(tl.float32)
        s += (-(slope * dist)) * LOG2E
    elif BIAS_MODE == 2:
        inb = (offs_m[:, None] < Tq) & (offs_n[None, :] < Tk)
        ptr = (bias_ptr + b.to(tl.int64) * sb_b + h.to(tl.int64) * sb_h
               + offs_m[:, None].to(tl.int64) * sb_q + offs_n[None, :] * sb_k)
        s += tl.load(ptr, mask=inb, other=0.0) * LOG2E
    if MASK_MODE == 1:
        if kind == PARTIAL:
            d = (offs_m[:, None] + off) - offs_n[None, :]
            s = tl.where((d >= win_lo) & (d <= win_hi), s, float("-inf"))
    elif MASK_MODE == 2:
        if kind == PARTIAL:
            rm = tl.arange(0, BLOCK_M)
            rn = tl.arange(0, BLOCK_N)
            ptr = (tiles_ptr + slot.to(tl.int64) * st_slot + b.to(tl.int64) * st_b
                   + h.to(tl.int64) * st_h + rm[:, None] * BLOCK_N + rn[None, :])
            s = tl.where(tl.load(ptr) != 0, s, float("-inf"))
    if not EVEN_N:
        s = tl.where(offs_n[None, :] < Tk, s, float("-inf"))
    return s, th
