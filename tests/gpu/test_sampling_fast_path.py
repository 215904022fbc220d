"""The native sampler's fast decode path (static shapes + CUDA graph) on the upcycled SmolLM2.

fp32: the static path's greedy tokens equal the model's own decode (YiLightningCache) token for
token, past the sliding window; bf16 (what the pipeline runs): the static path is the one taken,
16 samples per prompt come back, and seeded sampling repeats (up to the fused MoE's atomic
adds in the prefill, see the test).
"""

import copy
import time

import torch

from alignment.sampling import SamplingParams, build_sampler

PROMPTS = [
    [{"role": "user", "content": "What is 12 + 30? Answer with a number."}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    "The capital of France is",
]


def _sampler(model, tok, decode):
    # a model object samples in its own dtype (a checkpoint path would load in the sampler's)
    return build_sampler({"backend": "native", "decode": decode, "cuda_graphs": True}, model, tok, device="cuda")


def test_static_decode_matches_model_decode_fp32(upcycled):
    model, tok = upcycled
    model32 = copy.deepcopy(model).float()
    params = SamplingParams(max_new_tokens=96, temperature=0.0)
    fast = _sampler(model32, tok, "static").generate(PROMPTS, n=1, params=params)
    slow = _sampler(model32, tok, "model").generate(PROMPTS, n=1, params=params)
    for f, s in zip(fast, slow):
        assert f[0].token_ids == s[0].token_ids
        assert abs(f[0].logprob_sum - s[0].logprob_sum) < 1e-2 * max(1.0, abs(s[0].logprob_sum))


def test_static_decode_bf16_16_samples_seeded(upcycled):
    model, tok = upcycled
    sampler = _sampler(copy.deepcopy(model).bfloat16(), tok, "auto")
    assert sampler._use_static()  # the GPU default is the fast path
    params = SamplingParams(max_new_tokens=128, temperature=1.0, seed=7)
    t0 = time.perf_counter()
    a = sampler.generate(PROMPTS, n=16, params=params)
    wall = time.perf_counter() - t0
    b = sampler.generate(PROMPTS, n=16, params=params)
    assert [len(g) for g in a] == [16] * len(PROMPTS)
    # Seeded sampling repeats, up to one GPU effect: the prefill's fused MoE scatter-adds expert outputs
    # with fp32 atomics, whose order varies run to run, so a logit can differ in its last bf16 bit and
    # flip a draw that sits on a boundary; that row then diverges. Seen once on an H200 (2026-12-01):
    # the two calls were not identical. Every first token and nearly every sample must still agree.
    same = [sa.token_ids == sb.token_ids for ga, gb in zip(a, b) for sa, sb in zip(ga, gb)]
    first = [sa.token_ids[:1] == sb.token_ids[:1] for ga, gb in zip(a, b) for sa, sb in zip(ga, gb)]
    print(f"seeded repeat: {sum(same)}/{len(same)} samples identical, {sum(first)}/{len(first)} first tokens")
    assert sum(first) >= len(first) - 1 and sum(same) >= 0.75 * len(same)
    assert len({tuple(s.token_ids) for s in a[0]}) > 1  # temperature 1: the samples differ
    assert sampler.stats["decode_steps"] > 0 and sampler.stats["prefill_calls"] >= 2
    tokens = sum(len(s.token_ids) for g in a for s in g)
    print(f"native static+graph bf16: {tokens} tokens in {wall:.2f}s ({tokens / wall:,.0f} tokens/s, first call)")
    assert all(torch.isfinite(torch.tensor(s.logprob_sum)) for g in a for s in g)
