"""Hard-example selection: losses under a model, highest-loss rows kept, pass-rate and expansion hooks.

Run: python -m pytest -q tests/data/test_hard.py
"""

import pytest
import torch

from alignment.data.assemble import assemble
from alignment.data.decontam import DecontamSpec
from alignment.data.hard import HardSelectionSpec, example_losses, hardness, pass_rates, select_hardest
from alignment.data.mixture import MixtureSpec
from alignment.data.sources import LoadedSource, SourceSpec
from alignment.sampling.base import Sample


def _rec(q, a, src="s"):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": src, "id": q}


def test_select_hardest_keeps_highest_loss_in_pool_order():
    recs = [_rec(f"q{i}", "a") for i in range(6)]
    losses = [0.5, 3.0, 0.1, 2.0, 2.5, 0.0]
    kept, scores = select_hardest(recs, losses, 3)
    assert [r["id"] for r in kept] == ["q1", "q3", "q4"]
    all_scores = hardness(losses)
    assert min(scores) > max(all_scores[i] for i in (0, 2, 5))


def test_pass_rate_breaks_loss_ranking():
    recs = [_rec(f"q{i}", "a") for i in range(5)]
    losses = [3.0, 2.0, 1.0, 0.5, 0.1]
    # q0 has the highest loss but the model always solves it; q2 is never solved.
    kept, _ = select_hardest(recs, losses, 1, rates=[1.0, 1.0, 0.0, 1.0, 1.0])
    assert [r["id"] for r in kept] == ["q2"]
    # without pass rates, loss alone decides
    assert [r["id"] for r in select_hardest(recs, losses, 1)[0]] == ["q0"]
    with pytest.raises(ValueError):
        select_hardest(recs, losses[:2], 1)


class _FakeSampler:
    def generate(self, prompts, n, params):
        return [[Sample(text=f"{p[-1]['content']}-{j}", token_ids=[], logprob_sum=0.0, finish_reason="stop") for j in range(n)] for p in prompts]


def test_pass_rates_hook_gets_record_and_samples():
    seen = []

    def rate(record, samples):
        prompt = record["messages"][:-1]
        seen.append((prompt[-1]["content"], len(samples)))
        return None if prompt[-1]["content"] == "chat" else sum(s.endswith(("0", "1")) for s in samples) / len(samples)

    rates = pass_rates([_rec("math", "4"), _rec("chat", "hi")], _FakeSampler(), rate, k=4, params=None)
    assert rates == [0.5, None] and seen == [("math", 4), ("chat", 4)]
    with pytest.raises(ValueError, match="expected a value in"):
        pass_rates([_rec("m", "a")], _FakeSampler(), lambda p, s: 2.0, k=2, params=None)


def test_example_losses_match_manual_assistant_nll(tiny_model, tiny_tokenizer):
    recs = [_rec("What is 2 + 3?", "2 + 3 = 5."), _rec("hello there, how are you today?", "fine")]
    got = example_losses(tiny_model, tiny_tokenizer, recs, batch_size=2)
    for rec, loss in zip(recs, got):
        enc = tiny_tokenizer.apply_chat_template(rec["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]])
        mask = torch.tensor(enc["assistant_masks"]).bool()
        assert mask.any()
        logits = tiny_model(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[mask[1:]]
        assert loss == pytest.approx(nll.mean().item(), rel=1e-4)  # batched + padded == alone


def test_assemble_hard_selection_per_source_with_synth_and_expander():
    def src(name, n):
        return LoadedSource(SourceSpec(name=name, path=f"{name}.jsonl"), [_rec(f"{name} question {i}", "x" * (i + 1), name) for i in range(n)], n_read=n)

    pool_a, pool_b = src("a", 20), src("b", 20)
    synth = src("synth_sft", 4)
    mixture = MixtureSpec(name="sft_hard", target_count=14, sources=[pool_a.spec, pool_b.spec])
    # loss = answer length: the hardest are the longest answers of each source
    scorer = lambda recs: [float(len(r["messages"][-1]["content"])) for r in recs]  # noqa: E731
    expander_calls = []

    def expander(seeds, n_new, seed):
        expander_calls.append((len(seeds), n_new))
        return [{"messages": [{"role": "user", "content": f"variant of {s['id']}"}, {"role": "assistant", "content": "y"}]} for s in seeds[:n_new]]

    import alignment.data.assemble as asm

    real_load = asm.load_source
    asm.load_source = lambda spec, seed: {"a": pool_a, "b": pool_b}[spec.name]
    try:
        hard = HardSelectionSpec(enabled=True, expand_to=20)
        out = assemble(mixture, DecontamSpec(enabled=False), 0, [synth], hard, scorer, None, expander)
    finally:
        asm.load_source = real_load
    by = {s["name"]: s for s in out.report["sources"]}
    assert by["synth_sft"]["achieved"] == 4  # verified synth records kept whole, counted first
    assert by["a"]["achieved"] == 5 and by["b"]["achieved"] == 5
    a_kept = sorted(len(r["messages"][-1]["content"]) for r in out.records if r["source"] == "a")
    assert a_kept == [16, 17, 18, 19, 20]  # highest-loss rows of source a
    assert expander_calls == [(10, 6)] and by["expanded"]["achieved"] == 6
    assert out.report["achieved_count"] == len(out.records) == 20
    assert out.report["hard_selection"]["per_source"][0]["mean_loss_kept"] > out.report["hard_selection"]["per_source"][0]["mean_loss_pool"]
