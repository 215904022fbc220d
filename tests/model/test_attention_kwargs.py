"""Keyword arguments of the base model's forward reach an external attention backend.

vLLM's transformers backend calls the backbone with ``attention_instances=...`` and reads it in
its registered attention function; without the pass-through the keyword is lost on the way.
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.fixtures_model import build_tiny_model

SEEN: list[dict] = []


def _probe_attention(module, q, k, v, mask, **kwargs):
    SEEN.append({"layer": module.layer_idx, "tag": kwargs.get("attention_instances")})
    return sdpa_attention_forward(module, q, k, v, mask, **{k: v for k, v in kwargs.items() if k != "attention_instances"})


def test_base_model_kwargs_reach_external_attention_every_layer():
    AttentionInterface.register("yi_test_probe", _probe_attention)
    model = build_tiny_model(full_attention_interval=1)
    model.set_attn_implementation("yi_test_probe")
    x = torch.randint(0, model.config.vocab_size, (1, 12))
    SEEN.clear()
    with torch.no_grad():
        model.model(input_ids=x, use_cache=False, attention_instances="from-vllm")
    assert [s["layer"] for s in SEEN] == list(range(model.config.num_hidden_layers))
    assert {s["tag"] for s in SEEN} == {"from-vllm"}
