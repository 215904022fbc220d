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


def test_static_decode_bf16_16_samples(upcycled):
    model, tok = upcycled
    sampler = _sampler(copy.deepcopy(model).bfloat16(), tok, "auto")
    assert sampler._use_static()  # the GPU default is the fast path
    params = SamplingParams(max_new_tokens=128, temperature=1.0, seed=7)
    t0 = time.perf_counter()
    a = sampler.generate(PROMPTS, n=16, params=params)
    wall = time.perf_counter() - t0
    b = sampler.generate(PROMPTS, n=16, params=params)
    assert [len(g) for g in a] == [16] * len(PROMPTS)
    # bf16 repeats only approximately: the prefill's fused MoE scatter-adds expert outputs with fp32
    # atomics whose order varies run to run, so the KV cache can differ in its last bf16 bit and every
    # later step's logits with it; a draw on a boundary flips and that row diverges from there. Measured
    # on an H200 (2026-12-01): 47/48 first tokens and 10/48 whole samples of 128 tokens identical. The
    # sampler's own seeding is checked exactly in fp32 below.
    first = [sa.token_ids[:1] == sb.token_ids[:1] for ga, gb in zip(a, b) for sa, sb in zip(ga, gb)]
    same = [sa.token_ids == sb.token_ids for ga, gb in zip(a, b) for sa, sb in zip(ga, gb)]
    print(f"bf16 seeded repeat: {sum(same)}/{len(same)} samples identical, {sum(first)}/{len(first)} first tokens")
    assert sum(first) >= 0.9 * len(first)
    assert len({tuple(s.token_ids) for s in a[0]}) > 1  # temperature 1: the samples differ
    assert sampler.stats["decode_steps"] > 0 and sampler.stats["prefill_calls"] >= 2
    tokens = sum(len(s.token_ids) for g in a for s in g)
    print(f"native static+graph bf16: {tokens} tokens in {wall:.2f}s ({tokens / wall:,.0f} tokens/s, first call)")


def test_seeded_sampling_repeats_exactly_fp32(upcycled):
    # fp32: the atomics' order changes a logit by ~1e-7 relative, far below any draw's boundary, so the
    # same seed must give the same 48 samples token for token (the sampler's generator and row order)
    model, tok = upcycled
    sampler = _sampler(copy.deepcopy(model).float(), tok, "static")
    params = SamplingParams(max_new_tokens=64, temperature=1.0, seed=11)
    a = sampler.generate(PROMPTS, n=16, params=params)
    b = sampler.generate(PROMPTS, n=16, params=params)
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]
    c = sampler.generate(PROMPTS, n=16, params=SamplingParams(max_new_tokens=64, temperature=1.0, seed=12))
    assert [[s.token_ids for s in g] for g in a] != [[s.token_ids for s in g] for g in c]  # the seed matters


def test_compiled_static_decode_matches_eager_static_decode_fp32(upcycled):
    # compile_decode (Inductor, dynamic shapes) inside the CUDA graph: the same greedy tokens as the
    # eager static step in fp32, a second batch size without a recompile
    import torch._dynamo

    model, tok = upcycled
    model32 = copy.deepcopy(model).float()
    params = SamplingParams(max_new_tokens=64, temperature=0.0)
    eager = _sampler(model32, tok, "static").generate(PROMPTS, n=2, params=params)
    compiled = build_sampler({"backend": "native", "decode": "static", "cuda_graphs": True, "compile_decode": True},
                             model32, tok, device="cuda")
    t0 = time.perf_counter()
    got = compiled.generate(PROMPTS, n=2, params=params)
    print(f"first compiled generate (compile included): {time.perf_counter() - t0:.1f}s")
    for e, g in zip(eager, got):
        assert [s.token_ids for s in e] == [s.token_ids for s in g]
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled.generate(PROMPTS[:2], n=5, params=params)
