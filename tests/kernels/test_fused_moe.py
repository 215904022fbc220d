"""Fused MoE experts (alignment/kernels/moe.py) against the PyTorch reference, Liger-style.

Forward output and all four gradients (x, w_gate_up, w_down, topk_w) are compared with
``reference.moe_experts`` evaluated in float32 on the same inputs, over a table of shapes that
each exercise one edge (the reason is on the row). Routing-metadata invariants are checked
directly. On CPU this runs under TRITON_INTERPRET=1 (tests/kernels/conftest.py) on small shapes;
on a GPU the ``gpu``-marked rows add real sizes.

Run: ``python -m pytest -q tests/kernels/test_fused_moe.py``
"""

import pytest
import torch

pytest.importorskip("triton")

from alignment.kernels import moe_experts, reference  # noqa: E402
from tests.kernels.numerics import TOL, rel_err  # noqa: E402

# (T, D, I, E, K, routing, reason)
SHAPES = [
    (37, 48, 40, 5, 3, "random", "odd T; D and I not multiples of the tile: tail masking"),
    (16, 33, 17, 7, 2, "random", "odd H and I, prime E"),
    (24, 32, 32, 4, 1, "random", "K=1"),
    (12, 32, 24, 4, 4, "random", "K=E: every token visits every expert"),
    (1, 32, 32, 8, 2, "random", "T=1 (decode step): most experts empty"),
    (40, 32, 32, 6, 2, "skip_expert", "an expert with no tokens between two used ones"),
    (70, 32, 32, 4, 1, "one_expert", "all tokens on one expert: its segment spans several tiles"),
    (30, 32, 48, 6, 3, "top_p", "dynamic top-p: -1 slots, 0..K experts per token, a token with none"),
]
BF16_ROWS = [1, 7]
GPU_SHAPES = [
    (4096, 2048, 768, 64, 8, "random", "anchor-like layer, bf16 tiles at full size"),
    (2048, 1024, 384, 128, 16, "top_p", "fine-grained experts with top-p holes"),
]


def make_routing(kind: str, T: int, E: int, K: int, gen: torch.Generator):
    if kind == "one_expert":
        idx = torch.zeros(T, K, dtype=torch.long)
    else:
        idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
        if kind == "skip_expert":
            idx = torch.where(idx == E // 2, torch.full_like(idx, -1), idx)
        if kind == "top_p":
            idx[torch.rand(T, K, generator=gen) < 0.35] = -1
            idx[0] = -1
    w = torch.rand(T, K, generator=gen)
    return idx, w


def make_inputs(T, D, I, E, K, routing, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen)
    w_gu = torch.randn(E, 2 * I, D, generator=gen) / D**0.5
    w_down = torch.randn(E, D, I, generator=gen) / I**0.5
    idx, w = make_routing(routing, T, E, K, gen)
    cast = lambda t: t.to(dtype).to(device).requires_grad_()  # noqa: E731
    return cast(x), cast(w_gu), cast(w_down), idx.to(device), w.to(device).requires_grad_()


def check_against_reference(shape, dtype, device, seed=0):
    T, D, I, E, K, routing, _ = shape
    x, w_gu, w_down, idx, w = make_inputs(T, D, I, E, K, routing, dtype, device, seed)
    y = moe_experts(x, w_gu, w_down, idx, w, impl="triton")
    assert y.dtype == dtype and y.shape == (T, D)
    dy = torch.randn(T, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(device)
    y.backward(dy)
    leaves = [t.detach().float().cpu().requires_grad_() for t in (x, w_gu, w_down)]
    w_ref = w.detach().cpu().requires_grad_()
    y_ref = reference.moe_experts(*leaves, idx.cpu(), w_ref)
    y_ref.backward(dy.float().cpu())
    tol = TOL[dtype]
    assert rel_err(y, y_ref) < tol, "forward"
    for name, got, ref in zip(("dx", "dw_gate_up", "dw_down"), (x.grad, w_gu.grad, w_down.grad), leaves):
        if ref.grad.abs().max() == 0:  # e.g. T=1 leaves most experts' weight grads exactly zero
            assert got.abs().max() == 0, name
        else:
            assert rel_err(got, ref.grad) < tol, name
    assert w.grad.dtype == torch.float32
    assert rel_err(w.grad, w_ref.grad) < tol, "dtopk_w"
    assert (w.grad.cpu()[idx.cpu() < 0] == 0).all(), "unused slots must get zero routing-weight grad"


@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
def test_fp32_forward_backward(shape, device):
    check_against_reference(shape, torch.float32, device)


@pytest.mark.parametrize("shape", [SHAPES[i] for i in BF16_ROWS], ids=[SHAPES[i][-1] for i in BF16_ROWS])
def test_bf16_forward_backward(shape, device):
    check_against_reference(shape, torch.bfloat16, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="real sizes need a GPU")
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[s[-1] for s in GPU_SHAPES])
def test_gpu_real_sizes(shape, device):
    check_against_reference(shape, torch.bfloat16, device, seed=3)


def test_backward_recomputing_h(device, monkeypatch):
    """The memory-saving backward (dW_down rebuilds h from the saved gate/up) gives the same grads."""
    from alignment.kernels import moe

    monkeypatch.setattr(moe, "STORE_H_IN_BACKWARD", False)
    check_against_reference(SHAPES[0], torch.float32, device)


def test_fresh_inputs_every_seed(device):
    """The kernel computes the same function on a fresh random draw, not just the table's seeds."""
    for seed in (11,):
        check_against_reference(SHAPES[1], torch.float32, device, seed=seed)


@pytest.mark.parametrize("kind", ["random", "top_p", "one_expert"])
def test_routing_invariants(kind, device):
    from alignment.kernels.moe import routing_metadata

    T, E, K, bm = 53, 7, 3, 16
    idx, _ = make_routing(kind, T, E, K, torch.Generator().manual_seed(5))
    idx = idx.to(device)
    slot, tile_expert, pad_off, counts = routing_metadata(idx, E, bm)
    used = (idx >= 0).sum().item()
    assert counts.sum().item() == used and used <= T * K, "counts sum to the used slots (T*K without holes)"
    # scatter is the inverse of gather: every used slot appears exactly once in the sorted buffer
    real = slot[slot >= 0].long()
    assert torch.equal(real.sort().values, (idx.reshape(-1) >= 0).nonzero().squeeze(1))
    # each padded segment is tile-aligned and holds exactly its expert's slots
    assert (pad_off.diff() % bm == 0).all()
    for e in range(E):
        seg = slot[pad_off[e] : pad_off[e + 1]].long()
        seg = seg[seg >= 0]
        assert len(seg) == counts[e]
        assert (idx.reshape(-1)[seg] == e).all()
        assert (seg.diff() > 0).all(), "stable: tokens keep their order inside an expert"
        tiles = tile_expert[pad_off[e] // bm : pad_off[e + 1] // bm]
        assert (tiles == e).all()
    assert (tile_expert[pad_off[E] // bm :] == -1).all()
    # gathering token rows by slot and scatter-adding them back counts each token's used slots
    ones = torch.zeros(T, device=device).index_add_(0, real // K, torch.ones(len(real), device=device))
    assert torch.equal(ones, (idx >= 0).sum(1).float())


def test_no_grad_forward_matches(device):
    """Inference path (no saved gate/up buffer) gives the same output as the training path."""
    x, w_gu, w_down, idx, w = make_inputs(20, 32, 24, 5, 2, "random", torch.float32, device, 7)
    with torch.no_grad():
        y_inf = moe_experts(x, w_gu, w_down, idx, w, impl="triton")
    y_train = moe_experts(x, w_gu, w_down, idx, w, impl="triton")
    assert rel_err(y_inf, y_train.detach()) < 1e-6


def test_custom_op_registration(device):
    """Schema, fake (meta) kernel and autograd registration agree with the real kernel."""
    from alignment.kernels.moe import moe_forward

    x, w_gu, w_down, idx, w = make_inputs(9, 32, 16, 3, 2, "random", torch.float32, device, 9)
    torch.library.opcheck(moe_forward, (x, w_gu, w_down, idx, w, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))




def test_checkpoint_layout_matches_transformers_qwen3_moe(device):
    """Both ways: our expert weights are transformers' Qwen3MoeExperts tensors as they are.

    A stock Qwen3-MoE experts module loaded with our weights (and ours loaded with its) gives the
    same output for the same routing, so stock checkpoints load into the fused op unchanged.
    """
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    T, D, I, E, K = 20, 32, 24, 6, 2
    x, w_gu, w_down, idx, w = make_inputs(T, D, I, E, K, "random", torch.float32, "cpu", 13)
    cfg = Qwen3MoeConfig(hidden_size=D, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K)
    cfg._experts_implementation = "eager"
    stock = Qwen3MoeExperts(cfg)
    stock.load_state_dict({"gate_up_proj": w_gu.detach(), "down_proj": w_down.detach()})
    with torch.no_grad():
        want = stock(x, idx, w)
        ours = moe_experts(x.to(device), stock.gate_up_proj.to(device), stock.down_proj.to(device), idx.to(device),
                           w.to(device), impl="triton")
    assert rel_err(ours, want) < TOL[torch.float32]
