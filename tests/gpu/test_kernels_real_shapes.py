"""Every fused kernel at real shapes on the GPU, in bf16 and under bf16 autocast, against its
PyTorch reference (fresh random inputs each run).

bf16 rows: inputs are bf16 leaves; the reference runs in float32 on the same (upcast) values, so
the error is the kernel's own rounding (tolerances in tests/kernels/numerics.py).
autocast rows (tests/kernels/numerics.py ``compare_under_autocast``): fp32 master weights and
activations inside ``torch.autocast("cuda", bfloat16)``; both paths run under the same autocast and
the gradients must land in fp32.
"""

import pytest
import torch

from alignment import kernels
from alignment.kernels import reference
from tests.kernels.numerics import TOL, compare_under_autocast, rel_err

BF16 = TOL[torch.bfloat16]
dev = "cuda"


def check_bf16(kernel_fn, ref_fn, inputs, tol=BF16):
    """kernel on bf16 leaves vs reference on fp32 copies of the same values; same probe for both."""
    lo = [t.to(torch.bfloat16).detach().requires_grad_(t.is_floating_point()) for t in inputs]
    hi = [t.detach().float().requires_grad_(t.is_floating_point()) for t in lo]
    out = kernel_fn(*lo)
    ref = ref_fn(*hi)
    probe = torch.randn(ref.shape, device=dev)
    (out.float() * probe).sum().backward()
    (ref.float() * probe).sum().backward()
    assert out.dtype == torch.bfloat16 or out.dtype == torch.float32
    assert rel_err(out, ref) < tol
    for a, b in zip(lo, hi):
        if a.grad is not None:
            assert a.grad.dtype == torch.bfloat16
            assert rel_err(a.grad, b.grad) < tol


# MoE: the bench anchor shape and the upcycled SmolLM2 layer (D 576, 8 experts of 192, top-8)
MOE = [(16384, 2048, 768, 64, 8), (8192, 576, 192, 8, 8)]


def _moe_inputs(T, D, I, E, K):
    x = torch.randn(T, D, device=dev)
    w_gu = torch.randn(E, 2 * I, D, device=dev) * D**-0.5
    w_down = torch.randn(E, D, I, device=dev) * I**-0.5
    idx = torch.rand(T, E, device=dev).argsort(-1)[:, :K]
    tw = torch.softmax(torch.randn(T, K, device=dev), -1)
    return x, w_gu, w_down, idx, tw


@pytest.mark.parametrize("shape", MOE, ids=["anchor", "smollm2"])
def test_moe_bf16(shape):
    x, w_gu, w_down, idx, tw = _moe_inputs(*shape)
    check_bf16(lambda x, a, b, w: kernels.moe_experts(x, a, b, idx, w, impl="triton"),
               lambda x, a, b, w: reference.moe_experts(x, a, b, idx, w), [x, w_gu, w_down, tw])


@pytest.mark.parametrize("shape", MOE, ids=["anchor", "smollm2"])
def test_moe_autocast(shape):
    x, w_gu, w_down, idx, tw = _moe_inputs(*shape)
    compare_under_autocast(lambda x, a, b, w, impl: kernels.moe_experts(x, a, b, idx, w, impl=impl), [x, w_gu, w_down, tw])


def test_moe_dense_path_bf16_and_autocast():
    # the upcycled SmolLM2 layer routes every token to all 8 experts: impl="auto" takes the dense path
    T, D, I, E, K = MOE[1]
    x, w_gu, w_down, idx, tw = _moe_inputs(T, D, I, E, K)
    check_bf16(lambda x, a, b, w: kernels.moe_experts(x, a, b, idx, w),
               lambda x, a, b, w: reference.moe_experts(x, a, b, idx, w), [x, w_gu, w_down, tw])
    compare_under_autocast(lambda x, a, b, w, impl: kernels.moe_experts(x, a, b, idx, w, impl="auto" if impl == "triton" else impl),
                           [x, w_gu, w_down, tw])


@pytest.mark.parametrize("D", [576, 2048])
def test_rms_norm_bf16_and_autocast(D):
    x, res, w = torch.randn(8, 2048, D, device=dev), torch.randn(8, 2048, D, device=dev), 1 + 0.1 * torch.randn(D, device=dev)

    def k(x, r, w):
        y, h = kernels.rms_norm(x, w, 1e-5, residual=r, impl="triton")
        return torch.cat([y, h])

    def r(x, res, w):
        y, h = reference.rms_norm(x, w, 1e-5, residual=res)
        return torch.cat([y, h])

    check_bf16(k, r, [x, res, w])
    # autocast: a bf16 branch output into the fp32 residual stream
    xb = x.to(torch.bfloat16)
    for impl in ("torch", "triton"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, h = kernels.rms_norm(xb, w, 1e-5, residual=res, impl=impl)
        assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    compare_under_autocast(lambda x, r, w, impl: torch.cat([t.float() for t in kernels.rms_norm(x.bfloat16(), w, 1e-5, residual=r, impl=impl)]),
                   [x, res, w])


@pytest.mark.parametrize("N, D, V", [(8192, 576, 49152), (4096, 2048, 100352)], ids=["smollm2", "yi_vocab"])
def test_linear_cross_entropy_bf16_and_autocast(N, D, V):
    h, w = torch.randn(N, D, device=dev), torch.randn(V, D, device=dev) * D**-0.5
    labels = torch.randint(0, V, (N,), device=dev)
    labels[::5] = -100
    check_bf16(lambda h, w: kernels.linear_cross_entropy(h, w, labels, impl="triton"),
               lambda h, w: reference.linear_cross_entropy(h, w, labels), [h, w])
    compare_under_autocast(lambda h, w, impl: kernels.linear_cross_entropy(h, w, labels, impl=impl), [h, w])


@pytest.mark.parametrize("window, packed", [(None, False), (512, False), (512, True)], ids=["full", "sliding", "sliding_packed"])
def test_attention_bf16_and_autocast(window, packed):
    B, H, Kh, S, Dh = 2, 9, 3, 2048, 64  # SmolLM2's heads
    q, k, v = (torch.randn(B, n, S, Dh, device=dev) for n in (H, Kh, Kh))
    seq = None
    if packed:
        seq = torch.cumsum((torch.rand(B, S, device=dev) < 3 / S).long(), -1)  # ~3 documents per row
    check_bf16(lambda q, k, v: kernels.hybrid_attention(q, k, v, sliding_window=window, seq_ids_BS=seq, impl="triton"),
               lambda q, k, v: reference.hybrid_attention(q, k, v, sliding_window=window, seq_ids_BS=seq), [q, k, v])
    compare_under_autocast(lambda q, k, v, impl: kernels.hybrid_attention(q, k, v, sliding_window=window, seq_ids_BS=seq, impl=impl),
                   [q, k, v])


def test_upcycled_model_step_bf16_autocast_matches_torch_path(upcycled):
    """A whole training forward+backward of the upcycled SmolLM2 under bf16 autocast, fused path and
    torch path, each against the torch path in float32: over 30 layers bf16 rounding alone moves a
    deep layer's gradient by several percent, so the fused path must be about as close to fp32 as the
    torch path is, not equal to it."""
    model, tok = upcycled
    ids = torch.randint(0, len(tok), (4, 512), device=dev)
    losses, grads = {}, {}
    for impl, bf16 in (("torch", False), ("torch", True), ("triton", True)):
        model.config.impl = impl
        for mod in model.modules():
            if hasattr(mod, "impl"):
                mod.impl = impl
        model.zero_grad(set_to_none=True)
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        g = model.model.layers[3].mlp.experts.gate_up_proj.grad
        assert g.dtype == torch.float32
        losses[impl, bf16], grads[impl, bf16] = loss.item(), g.clone()
    model.eval().zero_grad(set_to_none=True)
    ref_loss, ref_grad = losses["torch", False], grads["torch", False]
    assert abs(losses["triton", True] - ref_loss) < 1e-2 * abs(ref_loss)
    torch_err = rel_err(grads["torch", True], ref_grad)
    fused_err = rel_err(grads["triton", True], ref_grad)
    assert fused_err < max(2 * torch_err, 1e-2), (fused_err, torch_err)
