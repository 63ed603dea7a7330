"""Forward kernel: one program per (query tile, batch * head), online softmax.

The program walks only the key tiles its row of the block map marks non-empty (a CSR
list ``row_ptr / row_col / row_kind / row_slot`` built by ``lowering.py``), keeps the
running max ``m``, normaliser ``l`` and output accumulator in float32, and writes the
output in the input dtype and the base-2 log-sum-exp (``+inf`` on rows that see no key,
whose output is 0). GQA/MQA: query head ``h`` reads key/value head ``h // G``; K and V
are never copied.
"""
import triton
import triton.language as tl

from attnkit.kernels.triton import configs

from . import common


@triton.jit
def attn_fwd(Q, K, V, O, LSE,
             sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
             so_b, so_h, so_t,
             row_ptr, row_col, row_kind, row_slot,
             slopes_ptr, bias_ptr, sb_b, sb_h, sb_q, sb_k,
             tiles_ptr, st_slot, st_b, st_h,
             H, G, Tq, Tk, D, Dv, scale, cap, win_lo, win_hi,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, SOFTCAP: tl.constexpr, BIAS_MODE: tl.constexpr,
             MASK_MODE: tl.constexpr, EVEN_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    off = Tk - Tq  # end alignment: query i sits at position i + off
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptr = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
    k_ptr = K + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h
    v_ptr = V + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h
    q = tl.load(q_ptr + offs_m[:, None].to(tl.int64) * sq_t + offs_d[None, :] * sq_d,
                mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D), other=0.0)  # (M, D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    start = tl.load(row_ptr + pid_m)
    end = tl.load(row_ptr + pid_m + 1)
    for idx in range(start, end):
        n = tl.load(row_col + idx)
        kind = tl.load(row_kind + idx)
        slot = tl.load(row_slot + idx)
        offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + offs_n[None, :].to(tl.int64) * sk_t + offs_d[:, None] * sk_d,
                     mask=(offs_n[None, :] < Tk) & (offs_d[:, None] < D), other=0.0)  # (D, N)
        qk = common.dot(q, kt)                                   # (M, N)
        s, _th = common.tile_scores(
            qk, offs_m, offs_n, b, h, kind, slot, Tq, Tk, off, scale, cap,
            slopes_ptr, bias_ptr, sb_b, sb_h, sb_q, sb_k, tiles_ptr, st_slot, st_b, st_h,
            win_lo, win_hi, SOFTCAP, BIAS_MODE, MASK_MODE, EVEN_N, BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m_i, common.row_max(s))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + common.row_sum(p)
        v = tl.load(v_ptr + offs_n[:, None].to(tl.int64) * sv_t + offs_dv[None, :] * sv_d,
                    mask=(offs_n[:, None] < Tk) & (offs_dv[None, :] < Dv), other=0.0)  # (N, Dv)
        acc = acc * alpha[:, None] + common.dot(p.to(v.dtype), v)
        m_i = m_new

    ok = l_i > 0.0
    out = acc / tl.where(ok, l_i, 1.0)[:, None]
    lse = tl.where(ok, m_i + tl.log2(tl.where(ok, l_i, 1.0)), float("inf"))
    o_ptr = O + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h
    tl.store(o_ptr + offs_m[:, None].to(tl.int64) * so_t + offs_dv[None, :],
             out.to(O.dtype.element_ty), mask=(offs_m[:, None] < Tq) & (offs_dv[None, :] < Dv))
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, lse, mask=offs_m < Tq)


# on the GPU: num_warps / num_stages autotuned per kernel variant (see configs.py);
# the interpreter ignores them, so it runs the plain kernel
attn_fwd_tuned = None if configs.interpreting() else triton.autotune(
    configs.autotune_configs("fwd"), key=configs.AUTOTUNE_KEY)(attn_fwd)
