"""Fused MoE experts on Triton: routing metadata, launch code, custom op, fake and autograd.

``moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK) -> y_TD`` computes
``y_t = sum_k w_tk * down_e(silu(gate_e x_t) * up_e x_t)`` (the math of ``reference.moe_experts``)
with four kinds of kernels (moe_kernels.py): a gather + grouped GEMM + SwiGLU for gate/up, a grouped
down-projection with the routing weight and the scatter-add back to tokens fused (fp32 atomics), and
for backward the SwiGLU/down backward, the dx scatter and per-expert weight gradients. Only the
[Mp, 2I] gate/up pre-activations are saved for backward; h = silu(g) * u is recomputed.

Routing metadata (``routing_metadata``) is built with a few sync-free torch ops (no host round
trip, so the op captures in CUDA graphs and torch.compile): the grid is sized by the static bound
``Mp <= T*K + E*BLOCK_M`` and tiles past the end exit at once.

Registered as ``yi_kernels::moe_forward`` / ``yi_kernels::moe_backward`` (torch.library.custom_op)
with ``register_fake`` and ``register_autograd``. Run the tests with
``TRITON_INTERPRET=1 python -m pytest -q tests/kernels/test_fused_moe.py`` on CPU, or on a GPU as is;
the benchmark is ``python bench/moe.py``.

Tuning constants (to tune: change one, re-run ``python bench/moe.py`` on the target GPU, keep
the faster; the interpreter ignores speed, so CPU tests use the small tiles):
    BLOCK_M_LARGE / BLOCK_M_SMALL  rows per tile of the sorted buffer (and the expert-segment padding):
                                   128 when experts average >= SMALL_M_THRESHOLD rows, else 64 to waste
                                   less padding at decode sizes.
    _GEMM_CONFIGS                  (BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel for bf16/fp16 on
                                   Hopper; fp32 halves BLOCK_K (shared memory) and uses ieee dots.
"""

from __future__ import annotations

import os

import torch
import triton

from alignment.kernels import moe_kernels as K

BLOCK_M_LARGE = 128
BLOCK_M_SMALL = 64
SMALL_M_THRESHOLD = 512
# kernel -> (BLOCK_N, BLOCK_K, num_warps, num_stages). 128x128x64 with 3-4 stages is the usual Hopper sweet
# spot for Triton bf16 GEMMs without warp specialization; _gate_up_fwd keeps two accumulators, so narrower N.
# Picked by ``python bench/moe.py --sweep anchor`` on an H100 (2026-11-25): each beat its neighbours by
# 0.3-0.8 ms of a ~13 ms forward+backward at the anchor shape (run-to-run spread ~0.2 ms).
_GEMM_CONFIGS = {
    "gate_up": (128, 64, 8, 3),
    "scatter": (128, 64, 4, 4),
    "down_bwd": (64, 128, 8, 3),
    "wgrad": (128, 128, 8, 4),  # (BLOCK_P, BLOCK_Q, warps, stages); BLOCK_M of the reduction is 64
}
_WGRAD_BLOCK_M = 64
# Backward keeps w * h = w * silu(g) * u ([Mp, I], written by _down_bwd) for the dW_down kernel instead
# of recomputing it there once per D block; False trades that transient buffer for the recompute.
STORE_H_IN_BACKWARD = True
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _cfg(name: str, dtype: torch.dtype):
    if _INTERPRET:  # speed is meaningless under the interpreter: small tiles keep tests quick
        return (32, 32, 4, 1)
    bn, bk, warps, stages = _GEMM_CONFIGS[name]
    if dtype == torch.float32:
        bk = bk // 2
        stages = min(stages, 3)
    return bn, bk, warps, stages


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 dots (matches the reference to ~1e-6); bf16/fp16 ignore this.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_m(T: int, K: int, E: int) -> int:
    if _INTERPRET:
        return 32
    return BLOCK_M_LARGE if T * K >= SMALL_M_THRESHOLD * E else BLOCK_M_SMALL


def routing_metadata(topk_idx_TK: torch.Tensor, num_experts: int, block_m: int):
    """Sort (token, slot) pairs by expert into a buffer whose expert segments are padded to ``block_m``.

    Returns ``(slot_Mp, tile_expert, pad_off_E1, counts_E)``:
      slot_Mp [Mp] int32  flat slot ``t*K + k`` of each sorted row, -1 for padding;
      tile_expert [Mp / block_m] int32  expert of each tile, -1 for tiles past the last segment;
      pad_off_E1 [E+1] int32  start of each expert's padded segment (end of the last at index E);
      counts_E [E] int64  used slots per expert (sums to the number of slots with topk_idx >= 0).
    Mp = cdiv(T*K, block_m)*block_m + E*block_m is a static bound, so nothing here syncs with the host.
    """
    T, Kt = topk_idx_TK.shape
    E = num_experts
    dev = topk_idx_TK.device
    M = T * Kt
    flat = topk_idx_TK.reshape(-1)
    key = torch.where(flat >= 0, flat, torch.full_like(flat, E))
    order = torch.argsort(key, stable=True)
    counts_all = torch.bincount(key, minlength=E + 1)
    counts_E = counts_all[:E]
    off = torch.cumsum(counts_all, 0) - counts_all  # exclusive prefix sums, [E+1]
    pad_counts = (counts_E + block_m - 1) // block_m * block_m
    pad_off = torch.zeros(E + 1, dtype=torch.int64, device=dev)
    pad_off[1:] = torch.cumsum(pad_counts, 0)
    Mp = triton.cdiv(M, block_m) * block_m + E * block_m
    skey = key[order]
    e_clamped = skey.clamp(max=E - 1)
    dest = pad_off[e_clamped] + torch.arange(M, device=dev) - off[skey]
    dest = torch.where(skey < E, dest, torch.full_like(dest, Mp))  # unused slots go to a dump row
    slot = torch.full((Mp + 1,), -1, dtype=torch.int32, device=dev)
    slot.scatter_(0, dest, order.to(torch.int32))
    starts = torch.arange(0, Mp, block_m, device=dev)
    tile_expert = torch.searchsorted(pad_off[1:], starts, right=True)
    tile_expert = torch.where(tile_expert < E, tile_expert, torch.full_like(tile_expert, -1))
    return slot[:Mp], tile_expert.to(torch.int32), pad_off.to(torch.int32), counts_E


def _check(x, w_gu, w_down, idx, tw):
    T, D = x.shape
    E, two_I, _ = w_gu.shape
    if w_gu.shape != (E, two_I, D) or two_I % 2 or w_down.shape != (E, D, two_I // 2):
        raise ValueError(
            f"moe_experts: x {tuple(x.shape)}, w_gate_up {tuple(w_gu.shape)}, w_down {tuple(w_down.shape)} "
            "(expected [T, D], [E, 2I, D], [E, D, I])"
        )
    if idx.shape != tw.shape or idx.shape[0] != T:
        raise ValueError(f"moe_experts: topk_idx {tuple(idx.shape)} / topk_w {tuple(tw.shape)} must be [T={T}, K]")
    if not (x.dtype == w_gu.dtype == w_down.dtype):
        raise TypeError(f"moe_experts: x, w_gate_up, w_down dtypes differ: {x.dtype}, {w_gu.dtype}, {w_down.dtype}")


@torch.library.custom_op("yi_kernels::moe_forward", mutates_args=())
def moe_forward(
    x: torch.Tensor, w_gu: torch.Tensor, w_down: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
    save_for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, gu, slot, tile_expert, pad_off); gu is empty unless ``save_for_backward``."""
    x, w_gu, w_down = x.contiguous(), w_gu.contiguous(), w_down.contiguous()
    T, D = x.shape
    E, two_I, _ = w_gu.shape
    I = two_I // 2
    Kt = topk_idx.shape[1]
    bm = _block_m(T, Kt, E)
    slot, tile_expert, pad_off, _ = routing_metadata(topk_idx, E, bm)
    Mp = slot.shape[0]
    n_tiles = Mp // bm
    h = torch.empty((Mp, I), dtype=x.dtype, device=x.device)
    gu = torch.empty((Mp if save_for_backward else 0, two_I), dtype=x.dtype, device=x.device)
    bn, bk, warps, stages = _cfg("gate_up", x.dtype)
    K._gate_up_fwd[(triton.cdiv(I, bn), n_tiles)](
        x, w_gu, slot, tile_expert, gu, h, D, I, Kt, x.stride(0), w_gu.stride(0), w_gu.stride(1),
        SAVE_GU=save_for_backward, PREC=_prec(x.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    y32 = torch.zeros((T, D), dtype=torch.float32, device=x.device)
    tw = topk_w.contiguous().to(torch.float32).reshape(-1)
    bn, bk, warps, stages = _cfg("scatter", x.dtype)
    # down: B[k, n] = w_down[e, n, k]
    K._mm_scatter[(triton.cdiv(D, bn), n_tiles)](
        h, w_down, slot, tile_expert, tw, y32, D, I, Kt,
        h.stride(0), w_down.stride(0), 1, w_down.stride(1), y32.stride(0),
        HAS_SCALE=True, PREC=_prec(x.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    return y32.to(x.dtype), gu, slot, tile_expert, pad_off


@moe_forward.register_fake
def _(x, w_gu, w_down, topk_idx, topk_w, save_for_backward):
    T, D = x.shape
    E, two_I, _ = w_gu.shape
    Kt = topk_idx.shape[1]
    bm = _block_m(T, Kt, E)
    Mp = triton.cdiv(T * Kt, bm) * bm + E * bm
    return (
        x.new_empty((T, D)),
        x.new_empty((Mp if save_for_backward else 0, two_I)),
        x.new_empty((Mp,), dtype=torch.int32),
        x.new_empty((Mp // bm,), dtype=torch.int32),
        x.new_empty((E + 1,), dtype=torch.int32),
    )


@torch.library.custom_op("yi_kernels::moe_backward", mutates_args=())
def moe_backward(
    dy: torch.Tensor, x: torch.Tensor, w_gu: torch.Tensor, w_down: torch.Tensor, topk_w: torch.Tensor,
    gu: torch.Tensor, slot: torch.Tensor, tile_expert: torch.Tensor, pad_off: torch.Tensor, top_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dw_gate_up, dw_down, dtopk_w)."""
    dy, x, w_gu, w_down = dy.contiguous(), x.contiguous(), w_gu.contiguous(), w_down.contiguous()
    T, D = x.shape
    E, two_I, _ = w_gu.shape
    I = two_I // 2
    Mp = slot.shape[0]
    bm = Mp // tile_expert.shape[0]
    n_tiles = tile_expert.shape[0]
    prec = _prec(x.dtype)
    tw = topk_w.contiguous().to(torch.float32).reshape(-1)
    dtw = torch.zeros_like(tw)
    dgu = torch.empty_like(gu)
    store_h = STORE_H_IN_BACKWARD
    h = torch.empty((Mp if store_h else 0, I), dtype=x.dtype, device=x.device)
    bn, bk, warps, stages = _cfg("down_bwd", x.dtype)
    K._down_bwd[(triton.cdiv(I, bn), n_tiles)](
        dy, w_down, gu, slot, tile_expert, tw, dgu, dtw, h, D, I, top_k,
        dy.stride(0), w_down.stride(0), w_down.stride(1),
        STORE_H=store_h, PREC=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    dx32 = torch.zeros((T, D), dtype=torch.float32, device=x.device)
    bn, bk, warps, stages = _cfg("scatter", x.dtype)
    # dx: B[k, n] = w_gu[e, k, n]
    K._mm_scatter[(triton.cdiv(D, bn), n_tiles)](
        dgu, w_gu, slot, tile_expert, tw, dx32, D, two_I, top_k,
        dgu.stride(0), w_gu.stride(0), w_gu.stride(1), 1, dx32.stride(0),
        HAS_SCALE=False, PREC=prec,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    bp, bq, warps, stages = _cfg("wgrad", x.dtype)
    wbm = min(_WGRAD_BLOCK_M, bm)  # must divide the segment padding
    dw_down = torch.empty_like(w_down)
    K._wgrad[(triton.cdiv(D, bp) * triton.cdiv(I, bq), E)](
        dy, h if store_h else gu, slot, pad_off, tw, dw_down, D, I, I, top_k,
        dy.stride(0), h.stride(0) if store_h else gu.stride(0), dw_down.stride(0),
        L_GATHER=True, L_SCALE=not store_h, R_GATHER=False, R_SWIGLU=not store_h, PREC=prec,
        BLOCK_M=wbm, BLOCK_P=bp, BLOCK_Q=bq, num_warps=warps, num_stages=stages,
    )
    dw_gu = torch.empty_like(w_gu)
    K._wgrad[(triton.cdiv(two_I, bp) * triton.cdiv(D, bq), E)](
        dgu, x, slot, pad_off, tw, dw_gu, two_I, D, I, top_k,
        dgu.stride(0), x.stride(0), dw_gu.stride(0),
        L_GATHER=False, L_SCALE=False, R_GATHER=True, R_SWIGLU=False, PREC=prec,
        BLOCK_M=wbm, BLOCK_P=bp, BLOCK_Q=bq, num_warps=warps, num_stages=stages,
    )
    return dx32.to(x.dtype), dw_gu, dw_down, dtw.view(topk_w.shape)


@moe_backward.register_fake
def _(dy, x, w_gu, w_down, topk_w, gu, slot, tile_expert, pad_off, top_k):
    dtw = torch.empty_like(topk_w, dtype=torch.float32)
    return torch.empty_like(x), torch.empty_like(w_gu), torch.empty_like(w_down), dtw


def _setup_context(ctx, inputs, output):
    x, w_gu, w_down, topk_idx, topk_w, _ = inputs
    _, gu, slot, tile_expert, pad_off = output
    ctx.save_for_backward(x, w_gu, w_down, topk_w, gu, slot, tile_expert, pad_off)
    ctx.top_k = topk_idx.shape[1]
    ctx.topk_w_dtype = topk_w.dtype


def _backward(ctx, dy, *_unused):
    x, w_gu, w_down, topk_w, gu, slot, tile_expert, pad_off = ctx.saved_tensors
    if gu.shape[0] == 0:
        raise RuntimeError("moe_forward ran with save_for_backward=False; call moe_experts with grad enabled")
    dx, dw_gu, dw_down, dtw = moe_backward(dy, x, w_gu, w_down, topk_w, gu, slot, tile_expert, pad_off, ctx.top_k)
    return dx, dw_gu, dw_down, None, dtw.to(ctx.topk_w_dtype), None


moe_forward.register_autograd(_backward, setup_context=_setup_context)


def moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK):
    """Fused routed experts; same contract as :func:`alignment.kernels.reference.moe_experts`."""
    _check(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK)
    if x_TD.shape[0] == 0:
        return torch.zeros_like(x_TD)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x_TD, w_gate_up_E2ID, w_down_EDI, topk_w_TK)
    )
    return moe_forward(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK, needs_grad)[0]
