"""Chunked fused linear + cross-entropy against ``reference.linear_cross_entropy``.

Run: ``python -m pytest -q tests/kernels/test_linear_ce.py`` (Triton interpreter on CPU).
"""

import pytest
import torch

pytest.importorskip("triton")

from alignment.kernels import linear_cross_entropy, reference  # noqa: E402
from tests.kernels.numerics import TOL, rel_err  # noqa: E402

# (N, D, V, chunk_elems, reason)
SHAPES = [
    (24, 16, 300, 300 * 7, "several chunks with a ragged last one (24 = 3*7 + 3 rows)"),
    (5, 32, 257, 2**27, "one chunk; V not a multiple of the vocab block"),
    (1, 8, 1000, 2**27, "a single row, V spans several vocab blocks"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
def test_against_reference(shape, dtype, device, monkeypatch):
    from alignment.kernels import linear_ce

    N, D, V, chunk, _ = shape
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMS", chunk)
    gen = torch.Generator().manual_seed(N + V)
    h = torch.randn(N, D, generator=gen).to(dtype).to(device).requires_grad_()
    w = (torch.randn(V, D, generator=gen) / D**0.25).to(dtype).to(device).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[::4] = -100  # ignored rows (prompt tokens)
    labels = labels.to(device)
    logp = linear_cross_entropy(h, w, labels, impl="triton")
    hr, wr = (t.detach().float().cpu().requires_grad_() for t in (h, w))
    ref = reference.linear_cross_entropy(hr, wr, labels.cpu())
    dl = torch.randn(N, generator=gen)  # per-token upstream grads: SFT means and DPO sums both occur
    logp.backward(dl.to(device))
    ref.backward(dl)
    assert logp.dtype == torch.float32
    assert (logp.detach().cpu()[labels.cpu() == -100] == 0).all()
    # logits are rounded to the input dtype in both paths; the rest is fp32
    assert rel_err(logp, ref) < TOL[dtype]
    assert rel_err(h.grad, hr.grad) < TOL[dtype], "dhidden"
    assert rel_err(w.grad, wr.grad) < TOL[dtype], "dweight"


def test_extreme_logits_stay_finite(device):
    """Regression guard for the online logsumexp: huge logits must not overflow exp()."""
    h = torch.full((3, 4), 100.0, device=device)
    w = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)).to(device) * 30
    labels = torch.tensor([0, 7, 49], device=device)
    out = linear_cross_entropy(h, w, labels, impl="triton")
    assert torch.isfinite(out).all()
    assert rel_err(out, reference.linear_cross_entropy(h.cpu(), w.cpu(), labels.cpu())) < 1e-5


def test_custom_op_registration(device):
    from alignment.kernels.linear_ce import linear_ce_fwd

    h = torch.randn(6, 8, device=device, requires_grad=True)
    w = torch.randn(40, 8, device=device, requires_grad=True)
    labels = torch.tensor([1, 2, -100, 3, 39, 0], device=device)
    torch.library.opcheck(linear_ce_fwd, (h, w, labels, -100),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
