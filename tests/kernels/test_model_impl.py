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
