"""Fused, chunked linear + cross-entropy returning per-token log-probs, on Triton + cuBLAS.

``linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index) -> logp_N`` (float32, 0.0 where
ignored): the math of ``reference.linear_cross_entropy`` without ever holding the [N, V] logits.
Rows are processed in chunks of ``C`` rows: a cuBLAS matmul makes the chunk's [C, V] logits, a Triton
kernel reduces them to logsumexp and the label's log-prob. Backward recomputes each chunk's logits
(one extra matmul, cheaper than keeping [N, V] around), turns them in place into
``dlogp * (onehot - softmax)`` and applies two matmuls: dH_chunk = G @ W and dW += G^T @ H_chunk.
Per-token outputs (rather than a reduced loss) let SFT means and DPO sequence sums share the op,
so the upstream gradient is applied per row in backward.

Registered as ``yi_kernels::linear_ce_fwd`` / ``yi_kernels::linear_ce_bwd`` with fakes and autograd.
Tests: ``python -m pytest -q tests/kernels/test_linear_ce.py``; benchmark: ``python bench/linear_ce.py``.

Tuning constants (to tune: change, re-run ``python bench/linear_ce.py``, keep the faster/leaner):
    CHUNK_ELEMS  logits elements per chunk (2**27: 256 MiB of bf16 at V=100,352 -> 1,337 rows). Larger
                 chunks amortize kernel launches and keep the matmuls big; smaller ones cut peak memory.
    BLOCK_V      vocabulary block per program iteration (4096 elements, 16 warps: one 128-bit load per
                 thread per iteration in bf16).
"""

from __future__ import annotations

import os

import torch
import triton

from alignment.kernels import linear_ce_kernels as K

CHUNK_ELEMS = 2**27
BLOCK_V = 256 if os.environ.get("TRITON_INTERPRET") == "1" else 4096
_WARPS = 16


def _chunk_rows(n: int, v: int) -> int:
    return max(1, min(n, CHUNK_ELEMS // max(v, 1)))


@torch.library.custom_op("yi_kernels::linear_ce_fwd", mutates_args=())
def linear_ce_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logp [N] fp32, lse [N] fp32)."""
    N, _ = hidden.shape
    V = weight.shape[0]
    logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
    lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
    labels = labels.contiguous()
    c = _chunk_rows(N, V)
    for s in range(0, N, c):
        e = min(N, s + c)
        logits = hidden[s:e] @ weight.t()
        K._ce_fwd[(e - s,)](logits, labels[s:e], logp[s:e], lse[s:e], V, logits.stride(0), ignore_index,
                            BLOCK_V=BLOCK_V, num_warps=_WARPS)
    return logp, lse


@linear_ce_fwd.register_fake
def _(hidden, weight, labels, ignore_index):
    n = hidden.shape[0]
    return hidden.new_empty((n,), dtype=torch.float32), hidden.new_empty((n,), dtype=torch.float32)


@torch.library.custom_op("yi_kernels::linear_ce_bwd", mutates_args=())
def linear_ce_bwd(
    dlogp: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (dhidden, dweight)."""
    N, _ = hidden.shape
    V = weight.shape[0]
    dlogp = dlogp.contiguous().float()
    labels = labels.contiguous()
    dh = torch.empty_like(hidden)
    # Weight grads accumulate chunk by chunk through addmm (fp32 inside cuBLAS, one rounding per chunk).
    dw = torch.zeros_like(weight)
    c = _chunk_rows(N, V)
    for s in range(0, N, c):
        e = min(N, s + c)
        g = hidden[s:e] @ weight.t()
        K._ce_bwd[(e - s, triton.cdiv(V, BLOCK_V))](g, labels[s:e], lse[s:e], dlogp[s:e], V, g.stride(0),
                                                    ignore_index, BLOCK_V=BLOCK_V, num_warps=_WARPS)
        torch.mm(g, weight, out=dh[s:e])
        dw.addmm_(g.t(), hidden[s:e])
    return dh, dw


@linear_ce_bwd.register_fake
def _(dlogp, hidden, weight, labels, lse, ignore_index):
    return torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    hidden, weight, labels, ignore_index = inputs
    ctx.ignore_index = ignore_index
    ctx.save_for_backward(hidden, weight, labels, output[1])


def _backward(ctx, dlogp, _dlse):
    hidden, weight, labels, lse = ctx.saved_tensors
    dh, dw = linear_ce_bwd(dlogp, hidden, weight, labels, lse, ctx.ignore_index)
    return dh, dw, None, None


linear_ce_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index: int = -100):
    """Same contract as :func:`alignment.kernels.reference.linear_cross_entropy`."""
    if hidden_ND.dim() != 2 or weight_VD.dim() != 2 or hidden_ND.shape[1] != weight_VD.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden_ND.shape)} and weight {tuple(weight_VD.shape)} "
                         "must be [N, D] and [V, D]")
    if labels_N.shape != hidden_ND.shape[:1]:
        raise ValueError(f"linear_cross_entropy: labels {tuple(labels_N.shape)} must be [N={hidden_ND.shape[0]}]")
    if hidden_ND.dtype != weight_VD.dtype:
        raise TypeError(f"linear_cross_entropy: hidden {hidden_ND.dtype} and weight {weight_VD.dtype} differ")
    return linear_ce_fwd(hidden_ND.contiguous(), weight_VD.contiguous(), labels_N, int(ignore_index))[0]
