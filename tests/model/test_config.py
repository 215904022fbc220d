"""Config: layer pattern, KV-sharing plan, validation errors, presets, RoPE scaling."""

import pytest
import torch

from alignment.model import YiLightningConfig, kv_cache_ratio, load_preset
from alignment.model.cache import YiLightningCache
from tests.fixtures_model import build_tiny_model


S, F = "sliding_attention", "full_attention"


def test_three_sliding_one_full_and_pairs():
    cfg = load_preset("paper_like")
    assert cfg.layer_types[:8] == [S, S, S, F, S, S, S, F]
    plan = cfg.kv_plan()
    full = [i for i, t in enumerate(cfg.layer_types) if t == F]
    assert [plan[i] for i in full[:4]] == [3, 3, 11, 11]  # consecutive full layers pair up
    assert all(plan[i] == i for i, t in enumerate(cfg.layer_types) if t == S)


def test_group_size_explicit_layer_types_and_sharing_off():
    types = [F, F, F, S, F, F, F]
    cfg = load_preset("tiny", num_hidden_layers=7, layer_types=types, kv_share_group_size=3)
    assert cfg.kv_plan() == [0, 0, 0, 3, 4, 4, 4]
    assert len(YiLightningCache(cfg).layers) == 3
    off = load_preset("tiny", kv_sharing=False)
    assert off.kv_plan() == list(range(8))
    # no sharing at 64K with the paper pattern: 1/4 full + 3/4 * 4096/65536
    assert kv_cache_ratio(load_preset("paper_like", kv_sharing=False), 65536) == pytest.approx(0.25 + 0.75 / 16)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layer_types": [S] * 3}, "layer_types has 3 entries"),
        ({"layer_types": [S] * 7 + ["global"]}, r"layer_types\[7\]"),
        ({"router_type": "expert_choice"}, "router_type"),
        ({"num_experts": 6}, "split evenly"),
        ({"router_min_k": 5, "router_max_k": 4}, "router_min_k"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling"),
    ],
)
def test_bad_config_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_preset("tiny", **overrides)


def test_presets_sizes():
    tiny, small = load_preset("tiny"), load_preset("small")
    with torch.device("meta"):
        from alignment.model import YiLightningForCausalLM

        n_tiny = sum(p.numel() for p in YiLightningForCausalLM(tiny).parameters())
        n_small = sum(p.numel() for p in YiLightningForCausalLM(small).parameters())
    assert 1e6 < n_tiny < 1e7
    assert 3e8 < n_small < 1e9 and small.vocab_size == 100352


def test_rope_scaling_changes_long_positions_only_when_asked():
    x = torch.randint(0, 1024, (1, 12))
    with torch.no_grad():
        base = build_tiny_model()(x).logits
        same = build_tiny_model(rope_scaling={"type": "linear", "factor": 1.0})(x).logits
        ntk = build_tiny_model(rope_scaling={"type": "ntk", "factor": 4.0})(x).logits
    torch.testing.assert_close(base, same)
    assert not torch.allclose(base, ntk)
