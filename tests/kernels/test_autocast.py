"""Under ``torch.autocast`` every fused op behaves like the torch op it replaces (issue: bf16 mixed
precision broke the fused kernels in the base stage).

Each test runs the Triton path and the PyTorch reference on the *same* fp32 master weights and
activations inside the same autocast region, then compares: output dtype equal, values within the
bf16 tolerance, and gradients landing in the fp32 master weights (dtype fp32, close to the
reference's). On CPU the kernels run under the Triton interpreter with CPU autocast; on a GPU with
CUDA autocast. Fresh random inputs each run (no fixed seed).
"""

import pytest
import torch

from tests.kernels.numerics import TOL, compare_under_autocast, rel_err

pytest.importorskip("triton")

from alignment import kernels  # noqa: E402

BF16 = TOL[torch.bfloat16]


def _autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_moe_experts_under_autocast(device, x_dtype):
    T, D, E, I, K = 96, 64, 4, 32, 2
    x = torch.randn(T, D, device=device).to(x_dtype)
    w_gu = torch.randn(E, 2 * I, D, device=device) * D**-0.5
    w_down = torch.randn(E, D, I, device=device) * I**-0.5
    idx = torch.stack([torch.randperm(E, device=device)[:K] for _ in range(T)])
    tw = torch.rand(T, K, device=device)

    def fn(x, w_gu, w_down, tw, impl):
        return kernels.moe_experts(x, w_gu, w_down, idx, tw, impl=impl)

    compare_under_autocast(fn, [x, w_gu, w_down, tw])


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_fp32_residual_under_autocast(device, x_dtype):
    """A bf16 branch output added to the fp32 residual stream: h is fp32 (promoted), y has x's dtype."""
    x = torch.randn(4, 24, 64, device=device).to(x_dtype)
    res = torch.randn(4, 24, 64, device=device)
    w = 1 + 0.1 * torch.randn(64, device=device)

    def fn(x, res, w, impl):
        y, h = kernels.rms_norm(x, w, 1e-6, residual=res, impl=impl)
        assert h.dtype == torch.promote_types(x.dtype, res.dtype) and y.dtype == x.dtype
        return torch.cat([y.float(), h.float()])

    compare_under_autocast(fn, [x, res, w])


def test_linear_cross_entropy_under_autocast(device):
    N, D, V = 48, 64, 300
    hidden = torch.randn(N, D, device=device)
    weight = torch.randn(V, D, device=device) * D**-0.5
    labels = torch.randint(0, V, (N,), device=device)
    labels[::7] = -100

    def fn(hidden, weight, impl):
        return kernels.linear_cross_entropy(hidden, weight, labels, impl=impl)

    compare_under_autocast(fn, [hidden, weight])


def test_hybrid_attention_under_autocast(device):
    """fp32 queries (RoPE in fp32) with bf16 keys/values: both paths attend in bf16."""
    B, H, Kh, S, Dh = 2, 4, 2, 128, 16
    q = torch.randn(B, H, S, Dh, device=device)
    k = torch.randn(B, Kh, S, Dh, device=device).bfloat16()
    v = torch.randn(B, Kh, S, Dh, device=device).bfloat16()
    with torch.no_grad(), _autocast(device):
        ref = kernels.hybrid_attention(q, k, v, sliding_window=32, impl="torch")
        out = kernels.hybrid_attention(q, k, v, sliding_window=32, impl="triton")
    assert out.dtype == ref.dtype == torch.bfloat16
    assert rel_err(out, ref) < BF16
    if device.type == "cuda":  # FlexAttention has a backward on CUDA only
        compare_under_autocast(lambda q, k, v, impl: kernels.hybrid_attention(q, k, v, sliding_window=32, impl=impl),
                               [q, k.float(), v.float()])


def test_tiny_model_trains_under_autocast_with_triton(device):
    """The failing case of the base stage: a bf16-autocast forward+backward of the whole model with the
    fused kernels, fp32 master weights; loss and grads match the torch path."""
    from alignment.model import YiLightningForCausalLM, load_preset

    ref = YiLightningForCausalLM(load_preset("tiny", impl="torch", num_hidden_layers=2)).to(device)
    fused = YiLightningForCausalLM(load_preset("tiny", impl="triton", num_hidden_layers=2)).to(device)
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, ref.config.vocab_size, (1, 16), device=device)
    losses = []
    for model in (ref, fused):
        with _autocast(device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
                   for p in model.parameters())
    assert abs(losses[0].item() - losses[1].item()) < 2e-2 * abs(losses[0].item())
    g_ref = ref.model.layers[-1].mlp.experts.gate_up_proj.grad
    g_fused = fused.model.layers[-1].mlp.experts.gate_up_proj.grad
    assert g_fused is not None and rel_err(g_fused, g_ref) < 5e-2
