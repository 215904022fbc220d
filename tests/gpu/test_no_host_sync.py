"""Our part of a training step never makes the host wait for the GPU.

A host sync inside the step (``.item()``, ``bool(tensor)``, a boolean index, ``unique()``) stalls the
host until the GPU has finished everything queued, and at this model's size the host then launches
the rest of the step with the GPU idle. Here one SFT forward + backward of the upcycled SmolLM2 on a
packed row (the h100_small step: padding-free packing, our fused linear+CE loss, per-sample
weighting, MoE aux losses, a fresh FlexAttention block mask) runs under
``torch.cuda.set_sync_debug_mode("error")``: the first sync raises, with its traceback.
"""

import torch

from alignment.train.sft import sft_loss


def _packed_row(vocab: int, docs: int = 8, doc_len: int = 250, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (1, docs * doc_len), generator=g)
    pos = torch.arange(doc_len).repeat(docs)[None]
    labels = ids.clone()
    labels[:, ::doc_len] = -100  # each document's first token (its "prompt") carries no loss
    return {"input_ids": ids.cuda(), "position_ids": pos.cuda(), "labels": labels.cuda()}


def test_sft_forward_backward_makes_no_host_sync(upcycled):
    model, tok = upcycled
    head = model.get_output_embeddings().weight

    def step(batch):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, parts = sft_loss(model, batch, "sample", lm_head_weight=head)
        loss.backward()
        return parts

    model.train()
    try:
        step(_packed_row(len(tok)))  # compiles FlexAttention, autotunes the kernels
        batch = _packed_row(len(tok), seed=1)  # new tensors: the block mask is built again, under the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            parts = step(batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.isfinite(parts["ce"]).item() and model.model.layers[0].mlp.experts.gate_up_proj.grad is not None
    finally:
        model.eval().zero_grad(set_to_none=True)
