"""Shared numerics for the kernel tests: the error measure and the per-dtype tolerances, with reasons.

Every kernel is compared with the PyTorch reference evaluated in float32 on the *same* (upcast)
inputs, by relative Frobenius error ||out - ref|| / ||ref|| (device/METHOD.md), so the bound
measures the kernel's own rounding and not the reference's.
"""

import torch

# float32: kernels use IEEE fp32 dots (input_precision="ieee"); the only differences are summation
#   order (tiling, fp32 atomics), ~sqrt(n) * 6e-8 for reductions of a few hundred terms -> 1e-5.
# bfloat16: inputs are exact in both paths, but the kernels round intermediates (gate/up, h, dgu) and
#   outputs to bf16 (unit roundoff 2^-8 = 3.9e-3); two chained roundings give ~5e-3 typical, so 2e-2
#   catches any indexing or masking bug (those give errors of order 1) without flaking.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN/Inf in ``out`` fails outright."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite values in kernel output"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
