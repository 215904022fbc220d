"""The dense MoE path (K == E: every token routed to every expert) against the routed reference."""

import pytest
import torch

from alignment import kernels
from alignment.kernels import reference
from tests.kernels.numerics import TOL, rel_err
from tests.kernels.test_fused_moe import make_inputs


@pytest.mark.parametrize("routing", ["random", "top_p"])
def test_dense_path_matches_the_routed_reference_fp32(routing):
    # K == E; "top_p" leaves -1 holes (experts a token does not use) that must add nothing
    T, D, I, E = 37, 32, 24, 6
    x, w_gu, w_down, idx, w = make_inputs(T, D, I, E, E, routing, torch.float32, "cpu", seed=3)
    y = kernels.moe_experts_dense(x, w_gu, w_down, idx, w)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w_gu, w_down, w)]
    y_ref = reference.moe_experts(leaves[0], leaves[1], leaves[2], idx, leaves[3])
    assert y.dtype == torch.float32 and rel_err(y, y_ref) < TOL[torch.float32]
    dy = torch.randn(T, D, generator=torch.Generator().manual_seed(4))
    y.backward(dy)
    y_ref.backward(dy)
    for got, ref in zip((x, w_gu, w_down, w), leaves):
        assert rel_err(got.grad, ref.grad) < TOL[torch.float32]


def test_auto_dispatches_dense_only_when_every_expert_is_routed(monkeypatch):
    calls = []
    dense = kernels.moe_experts_dense
    monkeypatch.setattr(kernels, "moe_experts_dense", lambda *a: calls.append(1) or dense(*a))
    T, D, I, E = 9, 16, 8, 4
    for K, expected in ((E, 1), (E - 1, 0)):
        calls.clear()
        x, w_gu, w_down, idx, w = make_inputs(T, D, I, E, K, "random", torch.float32, "cpu", seed=K)
        y = kernels.moe_experts(x, w_gu, w_down, idx, w)
        assert len(calls) == expected
        assert rel_err(y, reference.moe_experts(x, w_gu, w_down, idx, w)) < TOL[torch.float32]
    # an explicit impl keeps its own path (the kernel tests exercise the kernels, K == E included)
    calls.clear()
    x, w_gu, w_down, idx, w = make_inputs(T, D, I, E, E, "random", torch.float32, "cpu", seed=0)
    kernels.moe_experts(x, w_gu, w_down, idx, w, impl="torch")
    assert calls == []


def test_dense_path_under_bf16_autocast_keeps_fp32_master_grads():
    T, D, I, E = 33, 32, 16, 4
    x, w_gu, w_down, idx, w = make_inputs(T, D, I, E, E, "random", torch.float32, "cpu", seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.moe_experts(x, w_gu, w_down, idx, w)
    assert y.dtype == torch.float32  # x's dtype, as the reference returns
    y.float().sum().backward()
    assert w_gu.grad.dtype == w_down.grad.dtype == x.grad.dtype == torch.float32
    ref = reference.moe_experts(x.detach(), w_gu.detach(), w_down.detach(), idx, w.detach())
    assert rel_err(y, ref) < TOL[torch.bfloat16]
