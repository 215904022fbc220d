"""Attention masks of the model against a brute-force reference, and packed block-causal attention."""

import math

import pytest
import torch

from alignment.model.modeling import AttentionContext, apply_rope, cached_attention, rope_cos_sin
from tests.fixtures_model import build_tiny_model


def brute_force_attention(q, k, v, qpos, kpos, window, same_seq=None):
    """Loop over every (batch, head, query): softmax over the keys the rules allow."""
    B, H, S, Dh = q.shape
    rep = H // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(S):
                allowed = [
                    j for j in range(k.shape[2])
                    if kpos[j] <= qpos[i] and (window is None or qpos[i] - kpos[j] < window)
                    and (same_seq is None or same_seq[b][i][j])
                ]
                scores = torch.stack([q[b, h, i] @ k[b, h // rep, j] / math.sqrt(Dh) for j in allowed])
                p = scores.softmax(0)
                out[b, h, i] = sum(p[n] * v[b, h // rep, j] for n, j in enumerate(allowed))
    return out


@pytest.mark.parametrize("layer_idx", [0, 3], ids=["sliding", "full"])
def test_layer_attention_matches_brute_force(layer_idx):
    # S=40 > window=32, so the sliding layer really drops keys.
    model = build_tiny_model()
    attn = model.model.layers[layer_idx].self_attn
    B, S = 1, 40
    h = torch.randn(B, S, model.config.hidden_size)
    pos = torch.arange(S)[None]
    cos, sin = rope_cos_sin(model.config, pos, h.dtype)
    ctx = AttentionContext(past_len=0, seq_ids_BS=None, key_valid_BL=None)
    with torch.no_grad():
        got, _ = attn(h, cos, sin, ctx, None, None)
        q = apply_rope(attn.q_proj(h).view(B, S, 4, 32).transpose(1, 2), cos, sin)
        k = apply_rope(attn.k_proj(h).view(B, S, 2, 32).transpose(1, 2), cos, sin)
        v = attn.v_proj(h).view(B, S, 2, 32).transpose(1, 2)
        ref = brute_force_attention(q, k, v, list(range(S)), list(range(S)), attn.sliding_window)
        ref = attn.o_proj(ref.transpose(1, 2).reshape(B, S, -1))
    assert attn.is_sliding == (layer_idx == 0)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_cached_attention_ring_order_and_padding_match_brute_force():
    # Keys in ring order (positions not sorted) with a padded key: the mask follows positions.
    torch.manual_seed(0)
    q = torch.randn(2, 4, 3, 8)
    k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    kpos = torch.tensor([8, 9, 10, 5, 6, 7])  # ring slots hold positions out of order
    key_valid = torch.ones(2, 11, dtype=torch.bool)
    key_valid[1, 6] = False
    ctx = AttentionContext(past_len=8, seq_ids_BS=None, key_valid_BL=key_valid)
    got = cached_attention(q, k, v, kpos, ctx, sliding_window=4)
    same = [[[bool(key_valid[b, kpos[j]]) for j in range(6)] for _ in range(3)] for b in range(2)]
    ref = brute_force_attention(q, k, v, [8, 9, 10], kpos.tolist(), 4, same)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_packed_block_causal_equals_each_sample_alone():
    # TRL padding-free packing: one row, position_ids restart at 0 per sample, no attention mask.
    model = build_tiny_model()
    lens = [7, 40, 13]  # the 40-token sample crosses the 32-token window
    samples = [torch.randint(0, model.config.vocab_size, (1, n)) for n in lens]
    packed = torch.cat(samples, dim=1)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    with torch.no_grad():
        got = model(packed, position_ids=pos).logits
        alone = torch.cat([model(s).logits for s in samples], dim=1)
        leaky = model(packed).logits  # without restarting positions the samples attend to each other
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(leaky[:, 7:], alone[:, 7:], atol=1e-3)
