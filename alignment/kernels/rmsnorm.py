"""RMSNorm (+ fused residual add) on Triton: launch code, custom ops, fake kernels and autograd.

``rms_norm(x, weight, eps, residual=None) -> y`` or ``(y, h)`` with ``h = x + residual``; same math
as ``reference.rms_norm`` (fp32 statistics, output in x's dtype). Registered as
``yi_kernels::rms_norm_fwd`` / ``yi_kernels::rms_norm_bwd``. Fusing the residual add saves one
read and one write of the residual stream per layer and per direction.

Tests: ``python -m pytest -q tests/kernels/test_rmsnorm.py`` (Triton interpreter on CPU).

Tuning constants (to tune: change, re-run the tests on the GPU and time a training step):
    _BWD_PROGRAMS_PER_SM  backward programs per SM: each writes one fp32 partial dw row, so more programs
                          means more parallelism but a larger final reduction; 4 hides latency on H100.
    _warps(D)             warps per row: one warp per 256 fp32 elements of the row, 1..16.
"""

from __future__ import annotations

import torch
import triton

from alignment.kernels import rmsnorm_kernels as K

_BWD_PROGRAMS_PER_SM = 4


def _warps(block_d: int) -> int:
    return max(1, min(16, block_d // 256))


def _programs(device: torch.device, n_rows: int) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_rows, sms * _BWD_PROGRAMS_PER_SM))
    return max(1, min(n_rows, 4))


@torch.library.custom_op("yi_kernels::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, h, rstd); h is empty when there is no residual (then h is x itself)."""
    D = x.shape[-1]
    x2 = x.contiguous().view(-1, D)
    N = x2.shape[0]
    y = torch.empty_like(x2)
    h = torch.empty_like(x2) if residual is not None else x2.new_empty((0, D))
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    r2 = residual.contiguous().view(-1, D) if residual is not None else x2
    if N:
        bd = triton.next_power_of_2(D)
        K._rms_fwd[(N,)](x2, r2, weight.contiguous(), y, h, rstd, D, eps,
                         HAS_RESIDUAL=residual is not None, BLOCK_D=bd, num_warps=_warps(bd))
    return y.view(x.shape), (h.view(x.shape) if residual is not None else h), rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps, residual):
    D = x.shape[-1]
    n = x.numel() // D if D else 0
    return torch.empty_like(x), (torch.empty_like(x) if residual is not None else x.new_empty((0, D))), x.new_empty(
        (n,), dtype=torch.float32
    )


@torch.library.custom_op("yi_kernels::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(
    dy: torch.Tensor, dh: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight); dx already includes ``dh`` (the grad reaching the returned h)."""
    D = h.shape[-1]
    h2 = h.contiguous().view(-1, D)
    N = h2.shape[0]
    dy2 = dy.contiguous().view(-1, D)
    dx = torch.empty_like(h2)
    if N * D >= 2**31:
        raise ValueError(f"rms_norm backward: {N} x {D} elements overflow the kernel's int32 offsets; split the batch")
    progs = _programs(h.device, N)
    partial = torch.zeros((progs, D), dtype=torch.float32, device=h.device)
    if N:
        bd = triton.next_power_of_2(D)
        dh2 = dh.contiguous().view(-1, D) if dh is not None else dy2
        K._rms_bwd[(progs,)](dy2, dh2, h2, weight.contiguous(), rstd, dx, partial, N, D,
                             HAS_DH=dh is not None, BLOCK_D=bd, num_warps=_warps(bd))
    return dx.view(h.shape), partial.sum(0).to(weight.dtype)


@rms_norm_bwd.register_fake
def _(dy, dh, h, weight, rstd):
    return torch.empty_like(h), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, eps, residual = inputs
    _, h, rstd = output
    ctx.has_residual = residual is not None
    ctx.save_for_backward(h if ctx.has_residual else x, weight, rstd)


def _backward(ctx, dy, dh, _drstd):
    h, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dy, dh if ctx.has_residual else None, h, weight, rstd)
    return dx, dw, None, (dx if ctx.has_residual else None)


rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Same contract as :func:`alignment.kernels.reference.rms_norm`."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"rms_norm: residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    y, h, _ = rms_norm_fwd(x, weight, float(eps), residual)
    return y if residual is None else (y, h)
