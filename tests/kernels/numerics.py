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


def compare_under_autocast(fn, tensors, tol: float = TOL[torch.bfloat16]) -> None:
    """The autocast contract of a fused op: ``fn(*leaves, impl=...)`` with impl "torch" and "triton",
    each on fresh leaves of ``tensors`` inside the same bf16 ``torch.autocast``, then backward of
    ``sum(out * probe)`` with one fixed probe. Outputs agree in dtype and within ``tol``; every input
    gets a gradient in its own dtype (the fp32 master weights' dtype) and the gradients agree."""
    device = tensors[0].device
    runs = []
    for impl in ("torch", "triton"):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = fn(*leaves, impl=impl)
        probe = torch.linspace(-1, 1, out.numel(), device=device).view(out.shape)
        (out.float() * probe).sum().backward()
        runs.append((out.detach(), [leaf.grad for leaf in leaves]))
    (ref, ref_grads), (out, grads) = runs
    assert out.dtype == ref.dtype
    assert rel_err(out, ref) < tol
    for t, g, rg in zip(tensors, grads, ref_grads):
        assert g is not None and g.dtype == t.dtype == rg.dtype  # grads in the master weights' dtype
        assert rel_err(g, rg) < tol
