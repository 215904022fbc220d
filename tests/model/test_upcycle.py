"""Upcycling tests: dense Llama -> MoE keeps the dense function.

Run: python -m pytest -q tests/model/test_upcycle.py
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import alignment  # noqa: F401  (Auto-class registration for from_pretrained)
from alignment.model import YiLightningForCausalLM
from alignment.model.upcycle import calibrate_router, upcycle_dense


def tiny_llama(tie: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(cfg).eval()
    # non-trivial norms, so copying them (or not) shows in the logits
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    return model


def force_replica(moe_model: YiLightningForCausalLM, replicas: int, replica: int, weight: float) -> None:
    """Patch every router to pick all routed segments of ``replica`` (of ``replicas``), each with ``weight``."""
    routed = moe_model.config.num_experts // replicas
    for layer in moe_model.model.layers:
        moe = layer.mlp

        def route(x_TD, moe=moe, routed=routed):
            T = x_TD.shape[0]
            logits = moe.gate(x_TD).float()
            idx = torch.arange(replica * routed, (replica + 1) * routed).expand(T, routed).contiguous()
            w = torch.full((T, routed), weight, dtype=torch.float32)
            return logits, logits.softmax(-1), idx, w

        moe.route = route


@pytest.mark.parametrize(
    "segments, replicas, shared, replica",
    [
        (4, 1, 0, 0),  # plain segmentation
        (6, 3, 0, 2),  # replicated: the last replica alone reproduces the dense FFN
        (4, 2, 1, 1),  # one segment becomes the shared expert
        (1, 2, 0, 0),  # whole FFN per expert (classic sparse upcycling)
    ],
)
def test_forced_routing_equals_dense(segments, replicas, shared, replica):
    dense = tiny_llama()
    moe = upcycle_dense(dense, num_segments=segments, replicas=replicas, num_shared_segments=shared).eval()
    routed = segments - shared
    # total weight 1 on one replica: what norm_topk_prob gives a uniform pick of its segments
    force_replica(moe, replicas, replica, 1.0 / routed)
    x = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        want = dense(input_ids=x).logits
        got = moe(input_ids=x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert moe.config.num_experts == routed * replicas
    assert moe.config.moe_intermediate_size == 48 // segments


def test_default_router_start_is_exact_and_wrong_weights_are_not():
    dense = tiny_llama(tie=True)
    moe = upcycle_dense(dense, num_segments=4).eval()  # replicas=1, top_k=4: zero router picks all at 1/4
    x = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        want = dense(input_ids=x).logits
        torch.testing.assert_close(moe(input_ids=x).logits, want, atol=1e-5, rtol=1e-5)
        # the check above can fail: dropping half of the segments changes the logits
        force_replica(moe, 2, 0, 0.5)  # 4 segments seen as 2 "replicas" of 2: only half the FFN
        assert (moe(input_ids=x).logits - want).abs().max() > 1e-3
    assert moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()


def test_fewer_experts_per_token_count_each_segment_once():
    # top_k=2 of 4 segments: a token routed to segments {0, 1} at weight 1/2 each must get
    # exactly the dense FFN restricted to those segments (not an amplified half-FFN).
    dense = tiny_llama()
    moe = upcycle_dense(dense, num_segments=4, top_k=2).eval()
    force_replica(moe, 2, 0, 0.5)  # "replica 0" of 2 = segments 0 and 1
    with torch.no_grad():
        for layer in dense.model.layers:
            layer.mlp.down_proj.weight[:, 24:] = 0  # drop segments 2, 3 (columns 24..47)
        x = torch.randint(0, 97, (2, 9))
        torch.testing.assert_close(moe(input_ids=x).logits, dense(input_ids=x).logits, atol=1e-5, rtol=1e-5)


def test_calibrated_router_starts_closer_than_zero_router():
    # k=2 of 4 segments: a zero router picks by tie-break; the calibrated one by segment output norm
    dense = tiny_llama()
    x, calib = torch.randint(0, 97, (4, 32)), torch.randint(0, 97, (8, 32))
    moe = upcycle_dense(dense, num_segments=4, top_k=2).eval()
    with torch.no_grad():
        want = dense(input_ids=x).logits
        err_zero = (moe(input_ids=x).logits - want).pow(2).mean()
        r2 = calibrate_router(moe, dense, calib)
        err_cal = (moe(input_ids=x).logits - want).pow(2).mean()
    assert set(r2) == {0, 1} and all(0.0 < v <= 1.0 for v in r2.values())
    assert err_cal < 0.95 * err_zero


def test_save_load_and_generate(tmp_path):
    dense = tiny_llama()
    moe = upcycle_dense(dense, num_segments=2, replicas=2, top_k=2, router_init_std=0.02).eval()
    moe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, YiLightningForCausalLM)
    x = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, moe(input_ids=x).logits)
    out = loaded.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)


def test_bad_inputs_raise_clearly():
    dense = tiny_llama()
    with pytest.raises(ValueError, match="does not split into num_segments=5"):
        upcycle_dense(dense, num_segments=5)
    with pytest.raises(ValueError, match="num_shared_segments=4 must be in"):
        upcycle_dense(dense, num_segments=4, num_shared_segments=4)
