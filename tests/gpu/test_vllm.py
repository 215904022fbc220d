"""The vLLM backend on a GPU, from the upcycled SmolLM2 saved as a checkpoint folder.

Written against vLLM 0.26.0 (the release built on the GPU image's torch 2.11); not yet run.
Needs the project installed (``pip install -e . --no-deps``: vLLM's engine processes find our
architecture through its ``vllm.general_plugins`` entry point) and vLLM importable; skips otherwise.

- the backend generates from the upcycled checkpoint (16 samples per prompt come back);
- greedy tokens equal the native sampler's (both bf16) token for token, or the first divergence is
  a near tie: the two tokens' log-probs under our model differ by at most ``TIE_NATS``;
- seeded sampling repeats; different seeds differ;
- ``reload`` swaps weights without restarting the engine: a changed checkpoint changes the greedy
  output, reloading the original brings it back;
- ``close()`` gives the engine's GPU memory back (``torch.cuda.mem_get_info`` before/after).

Run on the GPU box: ``python -m pytest -q -m gpu tests/gpu/test_vllm.py``
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from alignment.sampling import SamplingParams, build_sampler

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not importable (GPU image: pip install -e '.[vllm]', vLLM 0.26.x for torch 2.11)",
                allow_module_level=True)

PROMPTS = [
    [{"role": "user", "content": "What is 12 + 30? Answer with a number."}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
    [{"role": "user", "content": "What is the capital of Japan?"}],
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
]
GREEDY = SamplingParams(max_new_tokens=48, temperature=0.0)
# bf16 on both sides, different kernels: a greedy step may flip where the top two tokens are this
# close (in nats, under our model); anything wider is a real mismatch.
TIE_NATS = 0.1
VLLM_CFG = {"backend": "vllm", "gpu_memory_utilization": 0.3, "max_model_len": 2048}  # the test process holds models too


@pytest.fixture(scope="module")
def checkpoint(upcycled, tmp_path_factory):
    model, tok = upcycled
    path = tmp_path_factory.mktemp("upcycled_ckpt")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint):
    sampler = build_sampler(VLLM_CFG, str(checkpoint))
    yield sampler
    sampler.close()


def _greedy_tokens(sampler):
    return [g[0].token_ids for g in sampler.generate(PROMPTS, n=1, params=GREEDY)]


def test_vllm_generates_from_the_upcycled_checkpoint(engine, upcycled):
    _, tok = upcycled
    groups = engine.generate(PROMPTS[:3], n=16, params=SamplingParams(max_new_tokens=32, temperature=1.0, seed=0))
    assert [len(g) for g in groups] == [16, 16, 16]
    for g in groups:
        assert all(s.token_ids and s.finish_reason in ("stop", "length") and s.logprob_sum <= 0 for s in g)
        assert len({tuple(s.token_ids) for s in g}) > 1, "16 samples at temperature 1 were all the same"
    print("vllm sample:", repr(groups[0][0].text[:200]))


def test_greedy_matches_the_native_sampler(engine, checkpoint, upcycled):
    from transformers import AutoModelForCausalLM

    from alignment.sampling.text import encode_prompts

    _, tok = upcycled
    native = build_sampler({"backend": "native", "dtype": "bfloat16"}, str(checkpoint), device="cuda")
    ours, theirs = _greedy_tokens(native), _greedy_tokens(engine)
    del native
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.bfloat16).cuda().eval()
    prompt_ids = encode_prompts(tok, PROMPTS)
    exact, report = 0, []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a == b:
            exact += 1
            continue
        d = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if d == min(len(a), len(b)):  # one stopped earlier (EOS) on the same prefix
            report.append(f"prompt {i}: same first {d} tokens, lengths {len(a)} (native) vs {len(b)} (vllm)")
            continue
        with torch.no_grad():
            ids = torch.tensor([prompt_ids[i] + a[:d]], device="cuda")
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        gap = abs(logp[a[d]].item() - logp[b[d]].item())
        report.append(f"prompt {i}: first divergence at token {d}: native {a[d]} ({logp[a[d]].item():.4f}) "
                      f"vs vllm {b[d]} ({logp[b[d]].item():.4f}), gap {gap:.4f} nats")
        assert gap <= TIE_NATS, "\n".join(report)
    print(f"greedy parity: {exact}/{len(PROMPTS)} prompts token for token", *report, sep="\n  ")
    assert exact >= len(PROMPTS) // 2, "\n".join(report)


def test_seeded_sampling_repeats(engine):
    params = SamplingParams(max_new_tokens=32, temperature=1.0, top_p=0.95, seed=7)
    first = [[s.token_ids for s in g] for g in engine.generate(PROMPTS[:4], n=4, params=params)]
    again = [[s.token_ids for s in g] for g in engine.generate(PROMPTS[:4], n=4, params=params)]
    other = [[s.token_ids for s in g] for g in engine.generate(PROMPTS[:4], n=4, params=SamplingParams(
        max_new_tokens=32, temperature=1.0, top_p=0.95, seed=8))]
    assert first == again
    assert first != other


def test_reload_swaps_weights_without_restarting(engine, checkpoint, upcycled, tmp_path):
    model, tok = upcycled
    base = _greedy_tokens(engine)
    llm = engine.llm
    with torch.no_grad():
        model.model.norm.weight.neg_()  # the final norm flipped: every logit changes sign
    try:
        model.save_pretrained(tmp_path / "changed", safe_serialization=True)
    finally:
        with torch.no_grad():
            model.model.norm.weight.neg_()
    engine.reload(tmp_path / "changed")
    changed = _greedy_tokens(engine)
    engine.reload(checkpoint)
    restored = _greedy_tokens(engine)
    assert engine.llm is llm, "reload must not start a new engine"
    assert changed != base, "the reloaded weights did not reach the engine"
    assert restored == base, "reloading the original checkpoint did not bring its outputs back"


def test_close_releases_the_engine_memory(checkpoint):
    torch.cuda.synchronize()
    free_before, total = torch.cuda.mem_get_info()
    sampler = build_sampler(VLLM_CFG, str(checkpoint))
    sampler.generate(PROMPTS[:2], n=2, params=SamplingParams(max_new_tokens=8, seed=0))
    free_running, _ = torch.cuda.mem_get_info()
    sampler.close()
    free_after, _ = torch.cuda.mem_get_info()
    gib = 2**30
    print(f"free GiB: before {free_before / gib:.1f}, engine up {free_running / gib:.1f}, after close {free_after / gib:.1f}")
    assert free_before - free_running > 0.2 * total, "the engine should hold its gpu_memory_utilization share"
    assert free_after >= free_before - 1 * gib, "close() left the engine's memory on the card"
