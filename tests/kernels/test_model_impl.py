"""The in-repo model gives the same logits with impl="triton" (Triton MoE/RMSNorm, FlexAttention) as
with impl="torch" (the references): the kernels are drop-in at the model level, not just op by op.

Run: ``python -m pytest -q tests/kernels/test_model_impl.py`` (Triton interpreter on CPU).
"""

import pytest
import torch

pytest.importorskip("triton")


def test_tiny_model_triton_matches_torch(device):
    from alignment.model import YiLightningForCausalLM, load_preset

    torch.manual_seed(0)
    ref = YiLightningForCausalLM(load_preset("tiny", impl="torch")).eval().to(device)
    fused = YiLightningForCausalLM(load_preset("tiny", impl="triton")).eval().to(device)
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, ref.config.vocab_size, (1, 12), device=device)
    with torch.no_grad():
        a, b = ref(input_ids=ids).logits, fused(input_ids=ids).logits
    # fp32 everywhere; on the GPU FlexAttention/Triton dots may use TF32 (~3e-4 relative)
    assert ((a - b).norm() / a.norm()).item() < (2e-3 if device.type == "cuda" else 1e-5)


def test_compiled_decode_step_traces_the_fused_kernels_in_one_graph():
    # sampler.compile_decode with the Triton kernels (the GPU's path; interpreter here): the kernels'
    # dispatch (is Triton installed, its modules) is answered before tracing, so Dynamo sees one graph
    # (a graph break per RMSNorm would leave little to fuse), and the output is the eager step's
    pytest.importorskip("triton")
    import torch._dynamo
    from torch._dynamo.utils import counters

    from alignment.sampling import static_decode
    from tests.fixtures_model import build_tiny_model

    model = build_tiny_model(seed=1, impl="triton").eval()
    tok, pos = torch.randint(3, model.config.vocab_size, (4,)), torch.zeros(4, dtype=torch.long)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(static_decode, "COMPILE_BACKEND", "aot_eager")
        mp.setattr(static_decode, "_compiled", {})
        torch._dynamo.reset()
        counters.clear()
        with torch.no_grad():
            got = static_decode.StaticDecoder(model, 4, 64, use_graph=False, compile=True).step(tok, pos, 0)
            want = static_decode.StaticDecoder(model, 4, 64, use_graph=False).step(tok, pos, 0)
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], list(counters["graph_break"])
        torch._dynamo.reset()
    torch.testing.assert_close(got, want)
