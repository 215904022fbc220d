"""Triton kernels for the routed SwiGLU experts (``@triton.jit`` code only; launch code is in moe.py).

Layout shared by every kernel. The T*K (token, slot) pairs are sorted by expert into a padded
buffer of ``Mp`` rows in which each expert's segment starts at a multiple of ``BLOCK_M``, so every
``BLOCK_M``-row tile belongs to exactly one expert (``tile_expert[tile]``, -1 past the end).
``slot[m]`` is the flat slot index ``t * K + k`` of sorted row m, or -1 for padding; the token is
``slot // K`` and the routing weight ``topk_w.flat[slot]``. Padding rows load as zeros and are
never stored back to tokens, so they cost FLOPs but never change results.

Kernels:
    _gate_up_fwd     gu = x[tok] @ w_gate_up[e].T, h = silu(g) * u         (gather + grouped GEMM + SwiGLU)
    _mm_scatter      out32[tok] += scale * (a @ B[e])                       (grouped GEMM + weight + scatter-add)
                     forward down-projection (scale = routing weight) and backward dx (scale = 1)
    _down_bwd        dh' = dy[tok] @ w_down[e]; dw += <dh', h>; dgu = SwiGLU'(w * dh'); stores w * h
                     (backward through the weighted down-projection and SwiGLU)
    _wgrad           dW[e] = sum_m L_m^T R_m over expert e's rows                         (per-expert weight gradients)

Shape legend: T tokens, K slots, E experts, D hidden, I expert FFN, Mp padded sorted rows.
"""

import os

import triton
import triton.language as tl

# Triton 3.7's CPU interpreter multiplies bf16 operands of tl.dot as raw bits (garbage results), so
# under TRITON_INTERPRET=1 operands are upcast to fp32 first. Compiled kernels never take that branch.
INTERPRET_UPCAST = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with fp32 accumulation (see INTERPRET_UPCAST)."""
    if INTERPRET_UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _silu_parts(g):
    sig = 1.0 / (1.0 + tl.exp(-g))
    return sig, g * sig


@triton.jit
def _gate_up_fwd(
    x_ptr, w_ptr, slot_ptr, tile_expert_ptr, gu_ptr, h_ptr,
    D, I, K_TOP,
    stride_xt, stride_we, stride_wn,
    SAVE_GU: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # N blocks vary fastest: the programs sharing one gathered row tile run together, so the tile is
    # read from HBM once and re-read from L2; the expert's weights stay in L2 across its row tiles.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    valid = slot >= 0
    tok = tl.where(valid, slot // K_TOP, 0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < I
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tok[:, None].to(tl.int64) * stride_xt + ks[None, :]
    w_base = w_ptr + e.to(tl.int64) * stride_we
    # B tiles are [BLOCK_K, BLOCK_N] views of the row-major [2I, D] weight (gate rows, then up rows).
    g_ptrs = w_base + cols[None, :].to(tl.int64) * stride_wn + ks[:, None]
    u_ptrs = g_ptrs + I * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kmask = (k0 + ks) < D
        a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
        bg = tl.load(g_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        bu = tl.load(u_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc_g = mma(a, bg, acc_g, PREC)
        acc_u = mma(a, bu, acc_u, PREC)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    out_dtype = h_ptr.dtype.element_ty
    g = acc_g.to(out_dtype).to(tl.float32)  # round like the saved copy, so backward sees the same h
    u = acc_u.to(out_dtype).to(tl.float32)
    _, silu = _silu_parts(g)
    rows64 = rows[:, None].to(tl.int64)
    omask = cmask[None, :]
    tl.store(h_ptr + rows64 * I + cols[None, :], (silu * u).to(out_dtype), mask=omask)
    if SAVE_GU:
        gu_ptrs = gu_ptr + rows64 * (2 * I) + cols[None, :]
        tl.store(gu_ptrs, g.to(out_dtype), mask=omask)
        tl.store(gu_ptrs + I, u.to(out_dtype), mask=omask)


@triton.jit
def _mm_scatter(
    a_ptr, w_ptr, slot_ptr, tile_expert_ptr, scale_ptr, out_ptr,
    N, KD, K_TOP,
    stride_am, stride_we, stride_wk, stride_wn, stride_ot,
    HAS_SCALE: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[tok(m), :] += scale[slot(m)] * sum_k a[m, k] * W[e, k, n]  (fp32 atomics: the fused scatter-add)."""
    # N blocks vary fastest: the programs sharing one gathered row tile run together, so the tile is
    # read from HBM once and re-read from L2; the expert's weights stay in L2 across its row tiles.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    valid = slot >= 0
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + ks[None, :]
    b_ptrs = w_ptr + e.to(tl.int64) * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        kmask = (k0 + ks) < KD
        a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = mma(a, b, acc, PREC)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_wk
    if HAS_SCALE:
        s = tl.load(scale_ptr + tl.where(valid, slot, 0), mask=valid, other=0.0)
        acc = acc * s[:, None]
    tok = tl.where(valid, slot // K_TOP, 0)
    o_ptrs = out_ptr + tok[:, None].to(tl.int64) * stride_ot + cols[None, :]
    tl.atomic_add(o_ptrs, acc, mask=valid[:, None] & cmask[None, :], sem="relaxed")


@triton.jit
def _down_bwd(
    dy_ptr, w_ptr, gu_ptr, slot_ptr, tile_expert_ptr, topk_w_ptr, dgu_ptr, dtopk_w_ptr, h_ptr,
    D, I, K_TOP,
    stride_dyt, stride_we, stride_wd,
    STORE_H: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward through the weighted down-projection and SwiGLU for one [BLOCK_M, BLOCK_N] tile of I."""
    # N blocks vary fastest: the programs sharing one gathered row tile run together, so the tile is
    # read from HBM once and re-read from L2; the expert's weights stay in L2 across its row tiles.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ptr + rows)
    valid = slot >= 0
    safe_slot = tl.where(valid, slot, 0)
    tok = safe_slot // K_TOP
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < I
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = dy_ptr + tok[:, None].to(tl.int64) * stride_dyt + ks[None, :]
    # w_down[e] is [D, I] row-major: a [BLOCK_K, BLOCK_N] tile is a plain row block.
    b_ptrs = w_ptr + e.to(tl.int64) * stride_we + ks[:, None].to(tl.int64) * stride_wd + cols[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kmask = (k0 + ks) < D
        a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = mma(a, b, acc, PREC)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_wd
    rows64 = rows[:, None].to(tl.int64)
    omask = cmask[None, :]
    gu_ptrs = gu_ptr + rows64 * (2 * I) + cols[None, :]
    g = tl.load(gu_ptrs, mask=omask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptrs + I, mask=omask, other=0.0).to(tl.float32)
    sig, silu = _silu_parts(g)
    # d(routing weight) = <dy, down(h)> = <dy @ w_down, h>, summed over this tile's share of I.
    h = silu * u
    part = tl.sum(acc * h, axis=1)
    tl.atomic_add(dtopk_w_ptr + safe_slot, part, mask=valid, sem="relaxed")
    w = tl.load(topk_w_ptr + safe_slot, mask=valid, other=0.0)
    if STORE_H:
        # w * h for the dW_down kernel: dW_down[e] = sum_m dy_m^T (w_m h_m), so that kernel neither
        # recomputes silu once per D block nor scales its gathered dy operand.
        tl.store(h_ptr + rows64 * I + cols[None, :], (h * w[:, None]).to(h_ptr.dtype.element_ty), mask=omask)
    dh = acc * w[:, None]
    dg = dh * u * sig * (1.0 + g * (1.0 - sig))
    du = dh * silu
    out_dtype = dgu_ptr.dtype.element_ty
    d_ptrs = dgu_ptr + rows64 * (2 * I) + cols[None, :]
    tl.store(d_ptrs, dg.to(out_dtype), mask=omask)
    tl.store(d_ptrs + I, du.to(out_dtype), mask=omask)


@triton.jit
def _wgrad(
    l_ptr, r_ptr, slot_ptr, pad_off_ptr, topk_w_ptr, out_ptr,
    P, Q, I, K_TOP,
    stride_l, stride_r, stride_oe,
    L_GATHER: tl.constexpr, L_SCALE: tl.constexpr, R_GATHER: tl.constexpr, R_SWIGLU: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """out[e, p, q] = sum over expert e's sorted rows m of L[m, p] * R[m, q].

    L/R rows are read either in sorted order (row m) or gathered from tokens (row slot // K);
    ``L_SCALE`` multiplies L by the routing weight; ``R_SWIGLU`` rebuilds R = silu(g) * u from the
    saved [Mp, 2I] pre-activations instead of keeping h around (recompute saves Mp*I memory).
    """
    pid = tl.program_id(0)
    e = tl.program_id(1)
    num_q = tl.cdiv(Q, BLOCK_Q)
    pid_p = pid // num_q
    pid_q = pid % num_q
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    pmask = ps < P
    qmask = qs < Q
    start = tl.load(pad_off_ptr + e)
    end = tl.load(pad_off_ptr + e + 1)
    acc = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    ms = tl.arange(0, BLOCK_M)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + ms
        slot = tl.load(slot_ptr + rows)
        valid = slot >= 0
        safe_slot = tl.where(valid, slot, 0)
        if L_GATHER:
            l_rows = safe_slot // K_TOP
        else:
            l_rows = rows
        if R_GATHER:
            r_rows = safe_slot // K_TOP
        else:
            r_rows = rows
        lt = tl.load(l_ptr + l_rows[None, :].to(tl.int64) * stride_l + ps[:, None],
                     mask=valid[None, :] & pmask[:, None], other=0.0)
        if L_SCALE:
            w = tl.load(topk_w_ptr + safe_slot, mask=valid, other=0.0)
            lt = (lt.to(tl.float32) * w[None, :]).to(lt.dtype)
        r_off = r_rows[:, None].to(tl.int64) * stride_r + qs[None, :]
        rmask = valid[:, None] & qmask[None, :]
        if R_SWIGLU:
            g = tl.load(r_ptr + r_off, mask=rmask, other=0.0)
            u = tl.load(r_ptr + r_off + I, mask=rmask, other=0.0)
            _, silu = _silu_parts(g.to(tl.float32))
            r = (silu * u.to(tl.float32)).to(g.dtype)
        else:
            r = tl.load(r_ptr + r_off, mask=rmask, other=0.0)
        acc = mma(lt, r, acc, PREC)
    o_ptrs = out_ptr + e.to(tl.int64) * stride_oe + ps[:, None].to(tl.int64) * Q + qs[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & qmask[None, :])
