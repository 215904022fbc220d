"""KV cache: cached decoding equals the full forward, ring buffer size, sharing, analytic == live bytes."""

import torch

from alignment.model import YiLightningCache, YiLightningConfig, kv_cache_bytes, kv_cache_ratio, load_preset
from tests.fixtures_model import build_tiny_model


def test_cached_logits_equal_full_forward_past_window_with_sharing():
    model = build_tiny_model(sliding_window=8)  # small window: crossing it takes few tokens
    cfg = model.config
    assert cfg.kv_plan()[7] == 3  # the second full layer borrows layer 3's K/V
    assert not hasattr(model.model.layers[7].self_attn, "k_proj")
    x = torch.randint(0, cfg.vocab_size, (2, 30))  # 30 > 3 * window
    cache = YiLightningCache(cfg)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        steps = [model(x[:, :5], past_key_values=cache, use_cache=True).logits]
        for t in range(5, 20):  # one token at a time, across the window boundary
            steps.append(model(x[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
        steps.append(model(x[:, 20:], past_key_values=cache, use_cache=True).logits)  # a 10-token chunk (> window)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    # sliding slots hold exactly `window` positions, full slots the whole sequence
    sizes = [layer.keys.shape[2] for layer in cache.layers]
    assert sizes == [8, 8, 8, 30, 8, 8, 8]
    assert cache.nbytes() == kv_cache_bytes(cfg, 30, batch=2, dtype_bytes=4)


def test_generate_uses_cache_and_matches_greedy_full_forward():
    model = build_tiny_model(sliding_window=8)
    prompt = torch.randint(0, model.config.vocab_size, (1, 4))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=14, do_sample=False, pad_token_id=0)
        seq = prompt
        for _ in range(14):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_generate_left_padded_batch_matches_unpadded():
    model = build_tiny_model()
    a = torch.randint(1, model.config.vocab_size, (1, 9))
    b = torch.randint(1, model.config.vocab_size, (1, 5))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        both = model.generate(batch, attention_mask=mask, **kw)
        alone = model.generate(b, **kw)
    assert torch.equal(both[1, 9:], alone[0, 5:])


def test_ring_buffer_layout_and_live_bytes_for_chunks():
    cfg = YiLightningConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=8, num_attention_heads=2, num_key_value_heads=1,
        head_dim=4, sliding_window=5, num_experts=4, ep_groups=2, pep_partitions=2, router_top_k=2, router_max_k=2,
    )
    cache = YiLightningCache(cfg)
    ring = cache.layers[0]
    seen = 0
    for n in [3, 1, 4, 9, 1, 1]:
        k = torch.arange(seen, seen + n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 1, n, 4)
        for layer in range(8):
            if cfg.kv_plan()[layer] == layer:
                cache.update_layer(layer, k, k)
        seen += n
        kept = ring.positions.tolist()
        assert sorted(kept) == list(range(max(0, seen - 5), seen))
        if len(kept) == 5:
            assert all(p % 5 == slot for slot, p in enumerate(kept))  # position p lives in slot p % window
        assert torch.equal(ring.keys[0, 0, :, 0], ring.positions.float())
        assert cache.nbytes() == kv_cache_bytes(cfg, seen, batch=1, dtype_bytes=4)
    assert cache.get_seq_length() == seen


def test_paper_pattern_ratio_at_64k_analytic_and_live():
    # The report's pattern (3 sliding @ 4096 : 1 full, full layers paired) gives 0.171875 at 65,536.
    assert kv_cache_ratio(load_preset("paper_like"), 65536) == 0.171875
    cfg = load_preset("paper_like", num_hidden_layers=8, num_key_value_heads=1, head_dim=2)
    cache = YiLightningCache(cfg)
    chunk = torch.zeros(1, 1, 8192, 2, dtype=torch.bfloat16)
    for _ in range(8):
        for layer in range(cfg.num_hidden_layers):
            if cfg.kv_plan()[layer] == layer:
                cache.update_layer(layer, chunk, chunk)
    live = cache.nbytes()
    assert live == kv_cache_bytes(cfg, 65536)
    assert live / (8 * 65536 * 2 * 2 * 2) == 0.171875  # all-full, no sharing: L * S * (K+V) * Dh * bf16
