"""The PyTorch references themselves (they are the CPU path and the kernels' ground truth); no Triton needed.

Run: ``python -m pytest -q tests/kernels/test_reference.py``
"""

import torch

from alignment.kernels import reference
from tests.kernels.numerics import rel_err


def make_moe(T, D, I, E, K, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen, dtype=torch.float64)
    w_gu = torch.randn(E, 2 * I, D, generator=gen, dtype=torch.float64)
    w_down = torch.randn(E, D, I, generator=gen, dtype=torch.float64)
    idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
    idx[torch.rand(T, K, generator=gen) < 0.3] = -1  # top-p holes
    return x, w_gu, w_down, idx, torch.rand(T, K, generator=gen, dtype=torch.float64)


def test_reference_matches_naive_loop():
    """The reference itself against a per-token loop written the obvious way (guards the baseline)."""
    x, w_gu, w_down, idx, w = make_moe(10, 8, 6, 4, 3, seed=4)
    y = reference.moe_experts(x, w_gu, w_down, idx, w)
    want = torch.zeros_like(y)
    for t in range(10):
        for k in range(3):
            e = idx[t, k]
            if e >= 0:
                g, u = (w_gu[e] @ x[t]).chunk(2)
                want[t] += w[t, k] * (w_down[e] @ (torch.nn.functional.silu(g) * u))
    assert rel_err(y, want) < 1e-12


def test_reference_mask_semantics():
    """The reference mask itself: causal, window and packing rules on a hand-checked example."""
    ids = torch.tensor([[0, 0, 1, 1, 1]])
    m = reference.attention_mask(5, 5, 2, ids, torch.device("cpu"))[0, 0]
    want = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],  # new sample starts: cannot see positions 0-1
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],  # window 2: position 2 is out of reach
    ], dtype=torch.bool)
    assert torch.equal(m, want)


def test_rms_norm_reference_against_formula():
    gen = torch.Generator().manual_seed(0)
    x, r = (torch.randn(3, 5, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    w = torch.randn(16, generator=gen, dtype=torch.float64)
    y, h = reference.rms_norm(x, w, 1e-6, residual=r)
    assert torch.equal(h, x + r)
    want = (x + r) / torch.sqrt(((x + r) ** 2).mean(-1, keepdim=True) + 1e-6) * w
    assert rel_err(y, want) < 1e-12


def test_linear_cross_entropy_reference_against_log_softmax():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 29, -100, 5, 5, -100, 17])
    got = reference.linear_cross_entropy(h, w, labels)
    lsm = torch.log_softmax(h @ w.t(), -1)
    for n, lab in enumerate(labels.tolist()):
        want = 0.0 if lab == -100 else lsm[n, lab].item()
        assert abs(got[n].item() - want) < 1e-6  # the reference computes in float32


def test_attention_reference_against_explicit_softmax():
    """GQA + window + packing through SDPA equals softmax(q k^T / sqrt(d) + mask) v written out."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 9, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1]])
    out = reference.hybrid_attention(q, k, v, sliding_window=3, seq_ids_BS=ids)
    mask = reference.attention_mask(9, 9, 3, ids, torch.device("cpu"))[0, 0]
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (q @ kk.transpose(-1, -2)) / 8**0.5
    want = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ vv
    assert rel_err(out, want) < 1e-12
