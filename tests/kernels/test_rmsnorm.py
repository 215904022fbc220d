"""Triton RMSNorm (+ residual) against ``reference.rms_norm``: forward, dx, dweight, dresidual.

Run: ``python -m pytest -q tests/kernels/test_rmsnorm.py`` (Triton interpreter on CPU).
"""

import pytest
import torch

pytest.importorskip("triton")

from alignment.kernels import reference, rms_norm  # noqa: E402
from tests.kernels.numerics import TOL, rel_err  # noqa: E402

# (shape, reason)
SHAPES = [
    ((4, 7, 64), "3-D activations, power-of-two D"),
    ((13, 97), "odd D: masked tail of the row block"),
    ((1, 1, 32), "a single row"),
    ((70, 48), "more rows than backward programs: each program walks several rows"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [s for s, _ in SHAPES], ids=[r for _, r in SHAPES])
def test_against_reference(shape, with_residual, dtype, device):
    gen = torch.Generator().manual_seed(sum(shape))
    mk = lambda *s: torch.randn(*s, generator=gen).to(dtype).to(device).requires_grad_()  # noqa: E731
    x, w = mk(*shape), mk(shape[-1])
    r = mk(*shape) if with_residual else None
    out = rms_norm(x, w, 1e-6, residual=r, impl="triton")
    leaves = [t.detach().float().cpu().requires_grad_() if t is not None else None for t in (x, w, r)]
    ref = reference.rms_norm(leaves[0], leaves[1], 1e-6, residual=leaves[2])
    outs, refs = (out, ref) if with_residual else ((out,), (ref,))
    gens = [torch.randn(o.shape, generator=gen) for o in refs]
    sum((o * g.to(o.dtype).to(device)).sum() for o, g in zip(outs, gens)).backward()
    sum((o * g).sum() for o, g in zip(refs, gens)).backward()
    tol = TOL[dtype]
    for o, rr in zip(outs, refs):
        assert o.dtype == dtype and o.shape == x.shape
        assert rel_err(o, rr) < tol
    assert rel_err(x.grad, leaves[0].grad) < tol, "dx"
    assert rel_err(w.grad, leaves[1].grad) < tol, "dweight"
    if with_residual:
        assert rel_err(r.grad, leaves[2].grad) < tol, "dresidual"


def test_custom_op_registration(device):
    from alignment.kernels.rmsnorm import rms_norm_fwd

    x, w, r = (torch.randn(5, 32, device=device, requires_grad=True) for _ in range(3))
    torch.library.opcheck(rms_norm_fwd, (x, w[0], 1e-6, r),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
