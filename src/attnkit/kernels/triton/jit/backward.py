"""Backward kernels (FlashAttention-2): the weights are recomputed tile by tile from the
saved base-2 log-sum-exp; ``delta = rowsum(dO * O)`` comes precomputed.

* ``attn_bwd_dkdv``: one program per (key tile, batch * kv head). It walks the query
  tiles its *column* of the block map marks non-empty (CSC list), for each of the G
  query heads sharing the kv head, and accumulates dK and dV in float32: no atomics, no
  K/V copies. With ``DBIAS`` it also writes dS (the gradient of the scores, before the
  softcap's derivative) into a (B, H, Tq, Tk) float32 buffer, the bias gradient.
* ``attn_bwd_dq``: one program per (query tile, batch * head), the forward's CSR walk,
  accumulating dQ.

Masked entries and rows that see no key (lse = +inf) get weight exp2(-inf) = 0, so
their gradients are exactly 0.
"""
import triton
import triton.language as tl

from attnkit.kernels.triton import configs

from . import common


@triton.jit
def attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DS,
                  sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
                  sdo_b, sdo_h, sdo_t, sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t,
                  col_ptr, col_row, col_kind, col_slot,
                  slopes_ptr, bias_ptr, sb_b, sb_h, sb_q, sb_k,
                  tiles_ptr, st_slot, st_b, st_h,
                  H, Hkv, G, Tq, Tk, D, Dv, scale, cap, win_lo, win_hi,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_DV: tl.constexpr, SOFTCAP: tl.constexpr, BIAS_MODE: tl.constexpr,
                  MASK_MODE: tl.constexpr, EVEN_N: tl.constexpr, DBIAS: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    off = Tk - Tq
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_n = offs_n < Tk
    kt = tl.load(K + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h
                 + offs_n[None, :].to(tl.int64) * sk_t + offs_d[:, None] * sk_d,
                 mask=in_n[None, :] & (offs_d[:, None] < D), other=0.0)          # (D, N)
    vt = tl.load(V + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h
                 + offs_n[None, :].to(tl.int64) * sv_t + offs_dv[:, None] * sv_d,
                 mask=in_n[None, :] & (offs_dv[:, None] < Dv), other=0.0)        # (Dv, N)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_DV], 0.0, tl.float32)
    start = tl.load(col_ptr + pid_n)
    end = tl.load(col_ptr + pid_n + 1)
    for g in range(0, G):
        h = hk * G + g
        bh = b * H + h
        q_ptr = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
        do_ptr = DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h
        for idx in range(start, end):
            m = tl.load(col_row + idx)
            kind = tl.load(col_kind + idx)
            slot = tl.load(col_slot + idx)
            offs_m = m * BLOCK_M + tl.arange(0, BLOCK_M)
            in_m = offs_m < Tq
            q = tl.load(q_ptr + offs_m[:, None].to(tl.int64) * sq_t + offs_d[None, :] * sq_d,
                        mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0)   # (M, D)
            do = tl.load(do_ptr + offs_m[:, None].to(tl.int64) * sdo_t + offs_dv[None, :],
                         mask=in_m[:, None] & (offs_dv[None, :] < Dv), other=0.0)  # (M, Dv)
            lse = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=in_m, other=float("inf"))
            delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=in_m, other=0.0)
            qk = common.dot(q, kt)                           # (M, N)
            s, th = common.tile_scores(
                qk, offs_m, offs_n, b, h, kind, slot, Tq, Tk, off, scale, cap,
                slopes_ptr, bias_ptr, sb_b, sb_h, sb_q, sb_k, tiles_ptr, st_slot, st_b, st_h,
                win_lo, win_hi, SOFTCAP, BIAS_MODE, MASK_MODE, EVEN_N, BLOCK_M, BLOCK_N)
            p = tl.exp2(s - lse[:, None])                                        # weights
            dv += common.dot(tl.trans(p.to(do.dtype)), do)
            dp = common.dot(do, vt)                          # (M, N)
            ds = p * (dp - delta[:, None])
            if DBIAS:
                tl.store(DS + bh.to(tl.int64) * Tq * Tk + offs_m[:, None].to(tl.int64) * Tk
                         + offs_n[None, :], ds, mask=in_m[:, None] & in_n[None, :])
            if SOFTCAP:
                ds = ds * (1.0 - th * th)
            dk += common.dot(tl.trans(ds.to(q.dtype)), q)
    dk = dk * scale
    tl.store(DK + b.to(tl.int64) * sdk_b + hk.to(tl.int64) * sdk_h
             + offs_n[:, None].to(tl.int64) * sdk_t + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=in_n[:, None] & (offs_d[None, :] < D))
    tl.store(DV + b.to(tl.int64) * sdv_b + hk.to(tl.int64) * sdv_h
             + offs_n[:, None].to(tl.int64) * sdv_t + offs_dv[None, :],
             dv.to(DV.dtype.element_ty), mask=in_n[:, None] & (offs_dv[None, :] < Dv))


@triton.jit
def attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
                sdo_b, sdo_h, sdo_t, sdq_b, sdq_h, sdq_t,
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
    off = Tk - Tq
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_m = offs_m < Tq
    q = tl.load(Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h
                + offs_m[:, None].to(tl.int64) * sq_t + offs_d[None, :] * sq_d,
                mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0)            # (M, D)
    do = tl.load(DO + b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h
                 + offs_m[:, None].to(tl.int64) * sdo_t + offs_dv[None, :],
                 mask=in_m[:, None] & (offs_dv[None, :] < Dv), other=0.0)         # (M, Dv)
    lse = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=in_m, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=in_m, other=0.0)
    k_ptr = K + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h
    v_ptr = V + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    start = tl.load(row_ptr + pid_m)
    end = tl.load(row_ptr + pid_m + 1)
    for idx in range(start, end):
        n = tl.load(row_col + idx)
        kind = tl.load(row_kind + idx)
        slot = tl.load(row_slot + idx)
        offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = offs_n < Tk
        k = tl.load(k_ptr + offs_n[:, None].to(tl.int64) * sk_t + offs_d[None, :] * sk_d,
                    mask=in_n[:, None] & (offs_d[None, :] < D), other=0.0)        # (N, D)
        vt = tl.load(v_ptr + offs_n[None, :].to(tl.int64) * sv_t + offs_dv[:, None] * sv_d,
                     mask=in_n[None, :] & (offs_dv[:, None] < Dv), other=0.0)     # (Dv, N)
        qk = common.dot(q, tl.trans(k))                       # (M, N)
        s, th = common.tile_scores(
            qk, offs_m, offs_n, b, h, kind, slot, Tq, Tk, off, scale, cap,
            slopes_ptr, bias_ptr, sb_b, sb_h, sb_q, sb_k, tiles_ptr, st_slot, st_b, st_h,
            win_lo, win_hi, SOFTCAP, BIAS_MODE, MASK_MODE, EVEN_N, BLOCK_M, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        dp = common.dot(do, vt)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - th * th)
        dq += common.dot(ds.to(k.dtype), k)
    dq = dq * scale
    tl.store(DQ + b.to(tl.int64) * sdq_b + h.to(tl.int64) * sdq_h
             + offs_m[:, None].to(tl.int64) * sdq_t + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=in_m[:, None] & (offs_d[None, :] < D))


attn_bwd_dkdv_tuned = None if configs.interpreting() else triton.autotune(
    configs.autotune_configs("bwd"), key=configs.AUTOTUNE_KEY)(attn_bwd_dkdv)
attn_bwd_dq_tuned = None if configs.interpreting() else triton.autotune(
    configs.autotune_configs("bwd"), key=configs.AUTOTUNE_KEY)(attn_bwd_dq)
