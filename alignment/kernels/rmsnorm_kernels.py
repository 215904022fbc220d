"""Triton kernels for RMSNorm with an optional fused residual add (``@triton.jit`` only; launch code in rmsnorm.py).

Forward, one row per program:  h = x + r (rounded to the input dtype, as an unfused model would),
y = h * rstd * w with rstd = 1/sqrt(mean(h^2) + eps) in fp32; stores y, h (when fused) and rstd.
Backward, a persistent grid of programs each walking rows with stride ``num_programs``:
dx = rstd * (dy*w - hn * mean(dy*w*hn)) (+ dh, the grad arriving at the returned h), hn = h*rstd;
each program accumulates its rows' dw = sum dy*hn in fp32 and writes one partial row.
"""

import triton
import triton.language as tl


@triton.jit
def _rms_fwd(
    x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, rstd_ptr,
    D, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * D + cols, mask=mask, other=0.0)
        # add in fp32 and round once: identical to a native bf16 add, and the CPU interpreter gets bf16 adds wrong
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(h_ptr + row * D + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + cols, (h * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_bwd(
    dy_ptr, dh_ptr, h_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr,
    N, D,
    HAS_DH: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for row in range(pid, N, nprog):
        off = row * D + cols  # int32: the wrapper checks N * D < 2**31
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + off, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        hn = h * rstd
        dyw = dy * w
        dx = rstd * (dyw - hn * (tl.sum(dyw * hn, axis=0) / D))
        if HAS_DH:
            dx += tl.load(dh_ptr + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * hn
    tl.store(dw_partial_ptr + pid.to(tl.int64) * D + cols, dw, mask=mask)
