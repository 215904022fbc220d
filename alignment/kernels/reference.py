"""Plain-PyTorch reference implementations of every op in :mod:`alignment.kernels`.

These are what ``impl="torch"`` runs (the default on CPU) and what the Triton kernels are tested
against. They are written to be *correct first* and reasonably fast on CPU: the tiny model trains
on CPU through them, so ``moe_experts`` sorts tokens by expert and does one matmul per expert
instead of looping over tokens.

Shape legend (torchtitan style):
    T  tokens                 D  hidden size             I  expert FFN size
    E  experts                K  routing slots per token (top-k; -1 marks an unused slot)
    B  batch                  H  query heads             Kh key/value heads (GQA)
    S  query length           L  key length              Dh head dim
    N  rows of a flattened batch                          V  vocabulary

Run the checks with ``python -m pytest -q tests/kernels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# MoE experts
# --------------------------------------------------------------------------------------------
def moe_routing(topk_idx_TK: torch.Tensor, num_experts: int):
    """Sort the (token, slot) pairs by expert.

    Returns ``(order_M, token_M, counts_E)``: ``order_M`` are indices into the flattened [T*K]
    slots of the *used* slots (``topk_idx >= 0``) sorted by expert (stable, so tokens keep their
    order inside an expert), ``token_M`` the token each sorted slot belongs to, and ``counts_E``
    the number of slots routed to each expert (``counts_E.sum() == M``, the number of used slots).
    """
    if topk_idx_TK.dim() != 2:
        raise ValueError(f"topk_idx must be [T, K], got shape {tuple(topk_idx_TK.shape)}")
    K = topk_idx_TK.shape[1]
    flat = topk_idx_TK.reshape(-1)
    if flat.numel() and int(flat.max()) >= num_experts:
        raise ValueError(f"topk_idx holds expert {int(flat.max())} but there are only {num_experts} experts")
    used = flat >= 0
    # Unused slots (-1) get key E so they sort last and are then dropped.
    key = torch.where(used, flat, torch.full_like(flat, num_experts))
    order = torch.argsort(key, stable=True)
    n_used = int(used.sum())
    order_M = order[:n_used]
    token_M = torch.div(order_M, K, rounding_mode="floor")
    counts_E = torch.bincount(flat[used], minlength=num_experts)
    return order_M, token_M, counts_E


def moe_experts(
    x_TD: torch.Tensor,
    w_gate_up_E2ID: torch.Tensor,
    w_down_EDI: torch.Tensor,
    topk_idx_TK: torch.Tensor,
    topk_w_TK: torch.Tensor,
) -> torch.Tensor:
    """``y_t = sum_k w_tk * down_e(silu(gate_e x_t) * up_e x_t)`` with ``e = topk_idx[t, k]``.

    ``w_gate_up_E2ID`` rows ``0..I-1`` are the gate projection, ``I..2I-1`` the up projection.
    Slots with ``topk_idx == -1`` contribute nothing. Accumulates in float32, returns ``x.dtype``.
    Differentiable w.r.t. ``x``, both weights and ``topk_w``.
    """
    T, D = x_TD.shape
    E, two_I, D_w = w_gate_up_E2ID.shape
    if D_w != D or two_I % 2 or w_down_EDI.shape != (E, D, two_I // 2):
        raise ValueError(
            f"moe_experts shapes disagree: x {tuple(x_TD.shape)}, w_gate_up {tuple(w_gate_up_E2ID.shape)}, "
            f"w_down {tuple(w_down_EDI.shape)} (expected [E, 2I, D] and [E, D, I])"
        )
    if topk_idx_TK.shape != topk_w_TK.shape or topk_idx_TK.shape[0] != T:
        raise ValueError(
            f"topk_idx {tuple(topk_idx_TK.shape)} and topk_w {tuple(topk_w_TK.shape)} must both be [T={T}, K]"
        )
    I = two_I // 2
    order_M, token_M, counts_E = moe_routing(topk_idx_TK, E)
    acc_dtype = torch.promote_types(x_TD.dtype, torch.float32)  # fp32 accumulation, fp64 stays fp64
    w_M = topk_w_TK.reshape(-1)[order_M].to(acc_dtype)
    x_MD = x_TD[token_M]
    out_TD = x_TD.new_zeros((T, D), dtype=acc_dtype)
    # One Python iteration per *expert* (not per token); .tolist() syncs once instead of per expert.
    start = 0
    for e, n in enumerate(counts_E.tolist()):
        if n == 0:
            continue
        xe = x_MD[start : start + n]
        gu = xe @ w_gate_up_E2ID[e].t()
        h = F.silu(gu[:, :I]) * gu[:, I:]
        ye = (h @ w_down_EDI[e].t()).to(acc_dtype) * w_M[start : start + n, None]
        out_TD = out_TD.index_add(0, token_M[start : start + n], ye)
        start += n
    return out_TD.to(x_TD.dtype)


# --------------------------------------------------------------------------------------------
# RMSNorm (+ residual add)
# --------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """``y = x / rms(x) * weight`` over the last dim, computed in float32, returned in ``x.dtype``.

    With ``residual``, first forms ``h = x + residual`` (in ``x.dtype``, as an unfused model would),
    normalizes ``h`` and returns ``(y, h)`` so the caller keeps ``h`` as the new residual stream.
    """
    h = x if residual is None else x + residual
    acc = torch.promote_types(h.dtype, torch.float32)  # fp32 statistics; fp64 stays fp64
    hf = h.to(acc)
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc)).to(x.dtype)
    return y if residual is None else (y, h)


# --------------------------------------------------------------------------------------------
# Linear + cross-entropy -> per-token log-probs
# --------------------------------------------------------------------------------------------
def linear_cross_entropy(
    hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """float32 ``log p(label_n | hidden_n)`` under ``softmax(hidden @ weight.T)``; 0.0 where ignored.

    The reference materializes the full [N, V] logits (in float32); the Triton path never does.
    """
    logits_NV = (hidden_ND @ weight_VD.t()).float()
    valid = labels_N != ignore_index
    safe = torch.where(valid, labels_N, torch.zeros_like(labels_N))
    picked = logits_NV.gather(1, safe[:, None]).squeeze(1)
    logp = picked - torch.logsumexp(logits_NV, dim=-1)
    return torch.where(valid, logp, torch.zeros_like(logp))


# --------------------------------------------------------------------------------------------
# Hybrid attention (causal, optional sliding window, optional packing)
# --------------------------------------------------------------------------------------------
def attention_mask(
    S: int,
    L: int,
    sliding_window: int | None,
    seq_ids_BS: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean mask (True = attend), shape [S, L] or [B, 1, S, L] when ``seq_ids`` is given.

    Queries are the *last* S of the L key positions (S < L while decoding with a KV cache).
    ``seq_ids_BS`` may cover the L keys or, when S == L, the S queries; the query ids are its
    last S columns.
    """
    if S > L:
        raise ValueError(f"more queries ({S}) than keys ({L})")
    qpos = torch.arange(L - S, L, device=device)[:, None]
    kpos = torch.arange(L, device=device)[None, :]
    mask = kpos <= qpos
    if sliding_window is not None:
        if sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        mask = mask & (qpos - kpos < sliding_window)
    if seq_ids_BS is not None:
        if seq_ids_BS.shape[-1] != L:
            raise ValueError(f"seq_ids has length {seq_ids_BS.shape[-1]}, expected the key length {L}")
        same = seq_ids_BS[:, L - S :, None] == seq_ids_BS[:, None, :]
        mask = (mask[None] & same)[:, None]
    return mask


def hybrid_attention(
    q_BHSD: torch.Tensor,
    k_BHKD: torch.Tensor,
    v_BHKD: torch.Tensor,
    *,
    sliding_window: int | None,
    seq_ids_BS: torch.Tensor | None,
) -> torch.Tensor:
    """Causal (optionally sliding-window, optionally block-causal) GQA attention via SDPA."""
    B, H, S, Dh = q_BHSD.shape
    Kh, L = k_BHKD.shape[1], k_BHKD.shape[2]
    if H % Kh:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Kh})")
    mask = attention_mask(S, L, sliding_window, seq_ids_BS, q_BHSD.device)
    if Kh != H:
        # Expanding K/V keeps every SDPA backend (including the CPU math one) available.
        k_BHKD = k_BHKD.repeat_interleave(H // Kh, dim=1)
        v_BHKD = v_BHKD.repeat_interleave(H // Kh, dim=1)
    return F.scaled_dot_product_attention(q_BHSD, k_BHKD, v_BHKD, attn_mask=mask)
