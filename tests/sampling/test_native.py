"""The native sampler against ground truth: full forward passes of the same model (no cache).

Run: python -m pytest -q tests/sampling
"""

from __future__ import annotations

import pytest
import torch

from alignment.sampling import SamplingParams, build_sampler
from alignment.sampling.native import nucleus_candidates
from tests.sampling.conftest import WINDOW

# Different lengths, so one batch needs left padding; a chat prompt goes through the template.
PROMPTS = ["Hello there, how are you today?", "1+1=", [{"role": "user", "content": "What is 2+3?"}]]


def full_forward_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation by re-running the whole sequence each step (no KV cache, no padding)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            nxt = model(x, use_cache=False).logits[0, -1].argmax()
            x = torch.cat([x, nxt.view(1, 1)], dim=1)
    return x[0, len(ids) :].tolist()


def full_forward_logprob(model, ids: list[int], completion: list[int]) -> float:
    """Sum of log p(completion | prompt) under the unmodified distribution, one full forward."""
    x = torch.tensor([ids + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(x, use_cache=False).logits[0].float(), dim=-1)
    pos = torch.arange(len(ids) - 1, len(ids) + len(completion) - 1)
    return logp[pos, torch.tensor(completion)].sum().item()


def prompt_ids(sampler, prompts):
    from alignment.sampling.tokens import encode_prompts

    return encode_prompts(sampler.tokenizer, prompts)


# "model": the model's own forward + YiLightningCache; "static": static_decode.py (the GPU path).
DECODE = ["model", "static"]


STEPS = 2 * WINDOW + 3  # prompt + generation run well past the sliding window: the ring wraps


@pytest.fixture(scope="module")
def greedy_refs(model, tokenizer):
    """Per prompt: (greedy continuation, its log-prob), both from full forward passes."""
    from alignment.sampling.tokens import encode_prompts

    refs = []
    for ids in encode_prompts(tokenizer, PROMPTS):
        want = full_forward_greedy(model, ids, STEPS)
        refs.append((want, full_forward_logprob(model, ids, want)))
    return refs


@pytest.mark.parametrize("decode, pad_multiple", [("model", 1), ("static", 1), ("static", 16)])
def test_greedy_equals_full_forward_argmax_past_window_with_kv_sharing(model, tokenizer, greedy_refs, decode, pad_multiple):
    # pad_multiple 16: extra all-padding columns (the CUDA default pads to 64) must change nothing.
    cfg = {"backend": "native", "decode": decode, "prompt_pad_multiple": pad_multiple}
    sampler = build_sampler(cfg, model, tokenizer)
    groups = sampler.generate(PROMPTS, n=2, params=SamplingParams(max_new_tokens=STEPS, temperature=0))
    for (want, want_logprob), group in zip(greedy_refs, groups):
        assert len(set(want)) > 3, "degenerate reference: the test would not catch a broken cache"
        for s in group:
            assert s.token_ids == want
            assert s.finish_reason == "length"
            assert s.logprob_sum == pytest.approx(want_logprob, abs=1e-3)


def test_compiled_static_decode_equals_full_forward_and_compiles_once(model, tokenizer, greedy_refs, monkeypatch):
    # compile_decode: the same greedy tokens as full forward passes; a second batch of another size (and
    # the compaction inside it) reuses the compiled step. Dynamo's graph tracing is what is checked
    # here (aot_eager backend); Inductor's code runs on the GPU (tests/gpu/test_sampling_fast_path.py).
    import torch._dynamo

    from alignment.sampling import static_decode

    monkeypatch.setattr(static_decode, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(static_decode, "_compiled", {})
    torch._dynamo.reset()
    sampler = build_sampler({"backend": "native", "decode": "static", "compile_decode": True}, model, tokenizer)
    from torch._dynamo.utils import counters

    counters.clear()
    groups = sampler.generate(PROMPTS, n=2, params=SamplingParams(max_new_tokens=STEPS, temperature=0))
    for (want, _), group in zip(greedy_refs, groups):
        assert all(s.token_ids == want for s in group)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        eos_stop = SamplingParams(max_new_tokens=STEPS, temperature=0, stop=[tokenizer.decode(greedy_refs[0][0][2:4])])
        sampler.generate(PROMPTS[:2], n=3, params=eos_stop)
    assert sampler.stats["compactions"] >= 1
    torch._dynamo.reset()


@pytest.mark.parametrize("decode", DECODE)
def test_sampled_logprob_sum_is_under_unmodified_distribution(model, tokenizer, decode):
    # temperature/top-k/top-p change what is drawn, not how it is scored.
    sampler = build_sampler({"backend": "native", "decode": decode}, model, tokenizer)
    params = SamplingParams(max_new_tokens=WINDOW + 4, temperature=0.7, top_k=20, top_p=0.9, seed=3)
    groups = sampler.generate(PROMPTS[:2], n=3, params=params)
    for ids, group in zip(prompt_ids(sampler, PROMPTS[:2]), groups):
        for s in group:
            assert s.logprob_sum == pytest.approx(full_forward_logprob(model, ids, s.token_ids), abs=1e-3)


@pytest.mark.parametrize("decode", DECODE)
def test_n_samples_share_one_prefill(model, tokenizer, decode):
    calls = []
    original = model.forward

    def spy(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    model.forward = spy
    try:
        sampler = build_sampler({"backend": "native", "max_prompts_per_batch": 8, "decode": decode}, model, tokenizer)
        sampler.generate(PROMPTS, n=6, params=SamplingParams(max_new_tokens=4, seed=0))
    finally:
        del model.forward
    width = max(len(p) for p in prompt_ids(sampler, PROMPTS))
    prefills = [c for c in calls if c[1] > 1]
    assert prefills == [(len(PROMPTS), width)], "one prefill of the 3 prompts, not one per sample"
    if decode == "model":
        assert all(c == (len(PROMPTS) * 6, 1) for c in calls[1:]), "then one token per sample per step"
    else:
        assert len(calls) == 1, "the static decoder runs the weights itself after the one prefill"
    assert sampler.stats["decode_steps"] == 3
    assert sampler.stats["prefill_tokens"] == len(PROMPTS) * width


def test_seed_determinism(model, tokenizer):
    sampler = build_sampler({"backend": "native"}, model, tokenizer)

    def run(seed):
        groups = sampler.generate(PROMPTS[:2], n=4, params=SamplingParams(max_new_tokens=6, seed=seed))
        return [[s.token_ids for s in g] for g in groups]

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert len({tuple(t) for t in first[0]}) > 1, "the n samples of a prompt must not be copies"


def test_per_prompt_seeds_do_not_depend_on_batch_mates(model, tokenizer):
    # SamplingParams.seeds: a prompt's samples are the same whether it is sampled alone, with other
    # prompts, or in another batch split (max_prompts_per_batch), even while finished rows are dropped
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seeds=[101, 202, 303])
    one = build_sampler({"backend": "native", "max_prompts_per_batch": 8}, model, tokenizer)
    split = build_sampler({"backend": "native", "max_prompts_per_batch": 1}, model, tokenizer)
    tokens = lambda groups: [[x.token_ids for x in g] for g in groups]  # noqa: E731
    together = tokens(one.generate(PROMPTS[:3], 4, params))
    assert tokens(split.generate(PROMPTS[:3], 4, params)) == together
    alone = tokens(one.generate(PROMPTS[1:2], 4, SamplingParams(max_new_tokens=10, temperature=1.0, seeds=[202])))
    assert alone == together[1:2]
    assert len({tuple(t) for t in together[0]}) > 1, "the n samples of a prompt must not be copies"
    other = tokens(one.generate(PROMPTS[:3], 4, SamplingParams(max_new_tokens=10, temperature=1.0, seeds=[101, 999, 303])))
    assert other[0] == together[0] and other[1] != together[1]  # a seed moves its own prompt only
    # rows that stop early are dropped from the batch (compaction): the streams still advance alike
    stopping = SamplingParams(max_new_tokens=10, temperature=1.0, seeds=[101, 202, 303], stop=["e", "a", "o"])
    before = one.stats["compactions"]
    together = tokens(one.generate(PROMPTS[:3], 4, stopping))
    assert one.stats["compactions"] > before
    assert tokens(split.generate(PROMPTS[:3], 4, stopping)) == together
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        one.generate(PROMPTS[:3], 4, SamplingParams(seeds=[1, 2]))


def test_inverse_cdf_draw_follows_the_distribution():
    # the per-prompt-seed draw (u -> first token whose CDF exceeds u) samples softmax(logits)
    from alignment.sampling.native import sample_tokens

    logits = torch.log(torch.tensor([[0.1, 0.0, 0.6, 0.3]]).clamp_min(1e-30)).expand(40000, 4)
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    tok, _ = sample_tokens(logits, SamplingParams(temperature=1.0), None, u)
    freq = torch.bincount(tok, minlength=4).float() / 40000
    assert freq[1] == 0  # a zero-probability token is never drawn
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.01, rtol=0)


def test_stop_string_and_eos_end_each_sequence_on_its_own(model, tokenizer):
    sampler = build_sampler({"backend": "native"}, model, tokenizer)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    free = sampler.generate(PROMPTS[:2], n=1, params=greedy)
    text0, ids0 = free[0][0].text, free[0][0].token_ids
    stop = text0[len(text0) // 2 : len(text0) // 2 + 2]
    assert stop and stop not in free[1][0].text, "pick a stop only the first prompt produces"

    stopped = sampler.generate(PROMPTS[:2], n=1, params=SamplingParams(max_new_tokens=12, temperature=0, stop=[stop]))
    s0, s1 = stopped[0][0], stopped[1][0]
    assert s0.finish_reason == "stop" and s0.text == text0[: text0.index(stop)]
    assert s0.token_ids == ids0[: len(s0.token_ids)] and len(s0.token_ids) < len(ids0)
    assert stop in tokenizer.decode(s0.token_ids) and stop not in tokenizer.decode(s0.token_ids[:-1])
    assert (s1.token_ids, s1.finish_reason) == (free[1][0].token_ids, "length"), "the other row runs on"

    # EOS: make the 4th greedy token of prompt 0 an end-of-sequence id.
    model.generation_config.eos_token_id = ids0[3]
    try:
        ended = sampler.__class__(model, tokenizer, sampler.cfg).generate(PROMPTS[:1], n=1, params=greedy)[0][0]
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert ended.finish_reason == "stop" and ended.token_ids == ids0[: ids0.index(ids0[3]) + 1]


def _kept(logits, temperature, top_k, top_p, **kw):
    """Probability of each vocabulary token after the filters (0 where removed), from the candidates."""
    x, ids = nucleus_candidates(logits, temperature, top_k, top_p, **kw)
    probs = torch.softmax(x, dim=-1)
    return probs if ids is None else torch.zeros_like(logits, dtype=torch.float32).scatter(1, ids, probs)


def _kept_by_full_sort(logits, temperature, top_k, top_p):
    """The same filters the slow way: mask below the k-th value, sort the whole row, cut the nucleus."""
    x = logits.float() / temperature
    if top_k:
        x = x.masked_fill(x < torch.topk(x, top_k, dim=-1).values[:, -1:], float("-inf"))
    if top_p < 1:
        sx, order = torch.sort(x, dim=-1, descending=True)
        p = torch.softmax(sx, dim=-1)
        x = x.scatter(1, order, sx.masked_fill(p.cumsum(-1) - p >= top_p, float("-inf")))
    return torch.softmax(x, dim=-1)


def test_nucleus_candidates_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda *a: (_kept(logits, *a)[0] > 0).tolist()  # noqa: E731
    assert keep(1.0, 2, 1.0) == [True, True, False, False]
    assert keep(1.0, 0, 0.45) == [True, False, False, False]
    assert keep(1.0, 0, 0.55) == [True, True, False, False]
    assert keep(1.0, 0, 0.81) == [True, True, True, False]
    assert keep(1.0, 0, 1.0) == [True] * 4
    assert keep(1.0, 3, 0.82) == [True, True, False, False]  # top-p over the top-3 survivors' own mass


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.8, 0, 0.95), (1.0, 0, 0.5), (0.7, 20, 0.9), (1.3, 300, 0.99)])
def test_nucleus_from_candidates_equals_the_full_sort(temperature, top_k, top_p):
    # peaked rows (the nucleus fits the candidates) and flat rows (it does not: the whole row is redone)
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(6, 1000, generator=g) * 6
    flat = torch.randn(2, 1000, generator=g) * 0.1
    for logits in (peaked, torch.cat([peaked, flat])):
        got = _kept(logits, temperature, top_k, top_p, max_candidates=64)
        torch.testing.assert_close(got, _kept_by_full_sort(logits, temperature, top_k, top_p), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("decode", DECODE)
def test_finished_rows_are_dropped_and_the_rest_decode_unchanged(model, tokenizer, greedy_refs, decode):
    # An EOS id that prompt 0's greedy continuation hits early and prompt 1's never does: prompt 0's
    # rows end, the batch is compacted, and prompt 1's rows must still follow the full-forward greedy.
    (ref0, _), (ref1, _) = greedy_refs[0], greedy_refs[1]
    eos = next(t for t in ref0[1:] if t not in ref1)
    model.generation_config.eos_token_id = eos
    try:
        sampler = build_sampler({"backend": "native", "decode": decode}, model, tokenizer)
        groups = sampler.generate(PROMPTS[:2], n=2, params=SamplingParams(max_new_tokens=STEPS, temperature=0))
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert sampler.stats["compactions"] == 1
    assert all(s.token_ids == ref0[: ref0.index(eos) + 1] and s.finish_reason == "stop" for s in groups[0])
    assert all(s.token_ids == ref1 and s.finish_reason == "length" for s in groups[1])
