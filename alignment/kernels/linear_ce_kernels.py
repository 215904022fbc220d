"""Triton kernels for chunked linear + cross-entropy (``@triton.jit`` only; launch code in linear_ce.py).

The logits of one chunk of rows come from a cuBLAS matmul; these kernels do the rest:
    _ce_fwd  one row per program: online max / sum-exp over V blocks -> lse; logp = logit[label] - lse
             (0 for ignored rows). Stores lse (fp32) so backward needs no second reduction.
    _ce_bwd  elementwise over a [row, V-block] grid, in place on the chunk's logits:
             g = dlogp * (onehot(label) - exp(logit - lse)), 0 for ignored rows: d logp / d logits.
All arithmetic is fp32 whatever the logits dtype.
"""

import triton
import triton.language as tl


@triton.jit
def _ce_fwd(logits_ptr, labels_ptr, logp_ptr, lse_ptr, V, stride_row, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        x = tl.load(base + v0 + cols, mask=(v0 + cols) < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes that have only seen -inf keep s = 0 (avoid exp(-inf - -inf) = nan)
        s = s * tl.where(m_new == float("-inf"), 0.0, tl.exp(m - m_new)) + tl.where(
            x == float("-inf"), 0.0, tl.exp(x - m_new))
        m = m_new
    mx = tl.max(m, axis=0)
    lse = mx + tl.log(tl.sum(s * tl.exp(m - mx), axis=0))
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    picked = tl.load(base + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(logp_ptr + row, tl.where(valid, picked - lse, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _ce_bwd(logits_ptr, labels_ptr, lse_ptr, dlogp_ptr, V, stride_row, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < V
    ptrs = logits_ptr + row.to(tl.int64) * stride_row + cols
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    label = tl.load(labels_ptr + row)
    lse = tl.load(lse_ptr + row)
    d = tl.load(dlogp_ptr + row)
    d = tl.where(label != ignore_index, d, 0.0)
    g = d * (tl.where(cols == label, 1.0, 0.0) - tl.exp(x - lse))
    tl.store(ptrs, g.to(logits_ptr.dtype.element_ty), mask=mask)
