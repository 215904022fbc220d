"""The reward stage end to end: recipe -> typed config -> two phases -> model, report, pairs; resume.

Run: python -m pytest -q tests/reward/test_runner.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignment.data.cards import validate_card
from alignment.pipeline import build_stage_config
from alignment.stage_contract import InputArtifact, StageContext
from reward.score import RewardScorer
from tests.reward.conftest import echo_pairs

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "stage" / "reward.yaml"

# tiny_cpu-style deltas on top of the paper-scale recipe
TINY = {
    "pretrain": {"sources": ["synth"], "max_steps": 6, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                 "learning_rate": 1e-3},
    "finetune": {"max_steps": 3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                 "learning_rate": 5e-4, "min_gap": 0.5},
    "train": {"max_length": 64, "bf16": False, "gradient_checkpointing": False, "save_steps": 3,
              "logging_steps": 5},
    "eval_fraction": 0.25,
    "onpolicy": {"sampler": {"backend": "native"}},  # the recipe's ${sampler} is the pipeline's group
}


def synth_layout_pairs(n: int) -> list[dict]:
    """Echo pairs in the synth stage's layout (message lists, scores, problem ids); every 3rd prompt has a
    second, low-gap pair so phase 2's curation has something to pick and something to drop."""
    rows = []
    for i, p in enumerate(echo_pairs(n, seed=4)):
        base = {"prompt": [{"role": "user", "content": p["prompt"]}], "problem_id": f"echo/{i}", "source": "echo",
                "kind": "math"}
        rows.append({**base, "chosen": [{"role": "assistant", "content": p["chosen"]}],
                     "rejected": [{"role": "assistant", "content": p["rejected"]}],
                     "chosen_score": 1.0, "rejected_score": 0.0})
        if i % 3 == 0:
            rows.append({**base, "chosen": [{"role": "assistant", "content": p["chosen"] + "!"}],
                         "rejected": [{"role": "assistant", "content": p["chosen"] + "?"}],
                         "chosen_score": 0.6, "rejected_score": 0.5})
    return rows


@pytest.fixture
def stage_ctx(tmp_path, tiny_tokenizer):
    from alignment.model import YiLightningForCausalLM
    from tests.fixtures_model import build_tiny_config

    import torch

    torch.manual_seed(0)
    policy = tmp_path / "sft_hard" / "model"
    YiLightningForCausalLM(build_tiny_config(num_hidden_layers=2)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synth_layout_pairs(48)))

    def make():
        return StageContext(
            name="reward", run_dir=tmp_path, stage_dir=tmp_path / "reward", device="cpu", seed=0,
            inputs={"policy": InputArtifact("sft_hard", policy.parent, {"model": policy}, {}),
                    "synth": InputArtifact("synth", synth, {"pairs": synth / "pairs.jsonl"}, {})})
    return make


def _cfg(**extra):
    block = OmegaConf.merge(OmegaConf.load(RECIPE), TINY, extra)
    fn, cfg, inputs = build_stage_config("reward", block)[:3]  # (runner, typed cfg, inputs, ...)
    assert inputs == {"policy": "sft_hard", "synth": "synth"}
    return fn, cfg


def test_reward_stage_runs_both_phases_and_resumes(stage_ctx):
    fn, cfg = _cfg()
    ctx = stage_ctx()
    (ctx.stage_dir).mkdir(parents=True)
    result = fn(cfg, ctx)
    m = result.metrics
    assert set(result.outputs) == {"model", "report", "pairs"}
    assert m["pretrain_steps"] == 6 and m["finetune_steps"] == 3
    # phase 2 = one curated pair per training prompt: 48 prompts minus the held-out ones
    pairs_dir = ctx.stage_dir / result.outputs["pairs"]
    pre = [json.loads(l) for l in (pairs_dir / "pretrain_train.jsonl").read_text().splitlines()]
    fin = [json.loads(l) for l in (pairs_dir / "finetune_train.jsonl").read_text().splitlines()]
    held = [json.loads(l) for l in (pairs_dir / "heldout.jsonl").read_text().splitlines()]
    assert m["finetune_train_pairs"] == len(fin) and m["pretrain_train_pairs"] == len(pre) > len(fin)
    assert all(r["chosen_score"] == 1.0 and r["rejected_score"] == 0.0 for r in fin), "highest vs lowest per prompt"
    train_prompts = {r["prompt"][0]["content"] for r in pre} | {r["prompt"][0]["content"] for r in fin}
    assert held and not train_prompts & {r["prompt"][0]["content"] for r in held}, "held-out prompts never trained on"
    header = validate_card(pairs_dir / "card.md")
    assert {s["name"]: s["count"] for s in header["sources"]}["heldout"] == len(held) == m["heldout_pairs"]

    # the published model is a loadable RM whose held-out accuracy is the reported metric
    scorer = RewardScorer.from_pretrained(ctx.stage_dir / result.outputs["model"])
    assert scorer.pairwise_accuracy(held)[0] == pytest.approx(m["pairwise_acc"])
    assert 0.0 <= m["pairwise_acc_init"] <= 1.0 and "length_spearman" in m
    report = ctx.stage_dir / result.outputs["report"]
    assert (report / "report.html").exists() and (report / "scores.jsonl").exists()
    assert len((report / "scores.jsonl").read_text().splitlines()) == 2 * len(held)

    # rerun (e.g. after a crash before the manifest was written): finished phases are loaded, not retrained
    again = fn(_cfg()[1], stage_ctx())
    assert again.metrics["pretrain_resumed_final"] == 1 and again.metrics["finetune_resumed_final"] == 1
    assert again.metrics["pairwise_acc"] == pytest.approx(m["pairwise_acc"])


def test_reward_stage_rejects_unknown_keys_and_phases(stage_ctx):
    from alignment.pipeline import PipelineError

    with pytest.raises(PipelineError, match="pretrain.colour"):
        _cfg(pretrain={"colour": 1})
    fn, cfg = _cfg(phases=["pretrain", "polish"])
    with pytest.raises(ValueError, match="unknown phase 'polish'"):
        fn(cfg, stage_ctx())


def test_empty_synth_pairs_skip_the_phase_or_fail_clearly(stage_ctx, caplog):
    """A weak policy's synth run may verify nothing: phases fed only by it are skipped, loudly."""
    ctx = stage_ctx()
    (ctx.inputs["synth"].outputs["pairs"]).write_text("")
    fn, cfg = _cfg(phases=["finetune"])
    with pytest.raises(ValueError, match="no phase has training pairs"):
        fn(cfg, ctx)
    # offline reference-solution pairs keep phase 1 going; phase 2 (synth only) is skipped
    fn, cfg = _cfg(pretrain={"sources": ["synth", "problems:templates:train:8"], "max_steps": 2,
                             "per_device_train_batch_size": 2},
                   train={"max_length": 256}, eval_fraction=0.5, max_heldout_pairs=1)
    result = fn(cfg, stage_ctx())
    assert result.metrics["finetune_skipped"] == 1 and result.metrics["pretrain_steps"] == 2
    assert "input 'synth' has no preference pairs" in caplog.text
    assert result.metrics["heldout_pairs"] == 1, "max_heldout_pairs caps the scored held-out set"


class _AnswerSampler:
    """Scripted policy (a stand-in for the model the stage would load): for each prompt, its first
    ``right`` samples give the problem's answer and the rest a wrong one."""

    def __init__(self, answers: dict[str, str], right: int):
        self.answers, self.right, self.calls = answers, right, 0

    def generate(self, prompts, n, params):
        from types import SimpleNamespace

        self.calls += 1
        out = []
        for p in prompts:
            ans = self.answers[p[-1]["content"]]
            texts = [f"step {j}\n#### {ans}" if j < self.right else f"step {j}\n#### {ans}1" for j in range(n)]
            out.append([SimpleNamespace(text=t, token_ids=[1], logprob_sum=0.0, finish_reason="stop") for t in texts])
        return out


def test_onpolicy_pairs_are_the_policys_right_vs_wrong_answers(stage_ctx, monkeypatch):
    import alignment.sampling
    from alignment.tasks.format import user_message
    from alignment.tasks.problems import ProblemSpec, training_problems
    from reward.onpolicy import pair_verified

    specs = [{"source": "templates", "n": 12, "seed": 2}]
    answers = {user_message(p): p.answer for p in training_problems([ProblemSpec(**s) for s in specs])}
    sampler = _AnswerSampler(answers, right=2)
    monkeypatch.setattr(alignment.sampling, "build_sampler", lambda cfg, path, **kw: sampler)
    onpolicy = {"enabled": True, "problems": specs, "n_samples": 5, "pairs_per_prompt": 2, "sampler": {"backend": "native"}}
    fn, cfg = _cfg(onpolicy=onpolicy, pretrain={"sources": ["onpolicy", "synth"]})
    ctx = stage_ctx()
    m = fn(cfg, ctx).metrics
    # 12 prompts x min(2 right, 3 wrong, 2) pairs, each the verifier's right answer over a wrong one
    assert m["onpolicy_pairs"] == 24 and m["onpolicy_prompts_with_pairs"] == 12 and m["onpolicy_pass_rate"] == pytest.approx(0.4)
    rows = [json.loads(l) for l in (ctx.stage_dir / "onpolicy.jsonl").read_text().splitlines()]
    assert all(r["chosen"].endswith(f"#### {answers[r['prompt']]}") and not r["rejected"].endswith(f"#### {answers[r['prompt']]}")
               for r in rows)
    # held-out pairs are scored per source: the on-policy accuracy is what online DPO asks of the RM
    assert m["heldout_pairs/onpolicy"] > 0 and 0.0 <= m["pairwise_acc/onpolicy"] <= 1.0
    assert sum(v for k, v in m.items() if k.startswith("heldout_pairs/")) == m["heldout_pairs"]
    # a rerun reuses the sampled pairs (no second sampling), and naming the source while it is off is an error
    fn(_cfg(onpolicy=onpolicy, pretrain={"sources": ["onpolicy", "synth"]})[1], stage_ctx())
    assert sampler.calls == 1
    with pytest.raises(ValueError, match="onpolicy.enabled is false"):
        fn(_cfg(pretrain={"sources": ["onpolicy"]})[1], stage_ctx())
    # at most k pairs: first those sharing no answer, then the other combinations, never one twice
    import random

    answers = [("a", True), ("a", True), ("b", True), ("x", False), ("y", False), ("z", False)]
    got = pair_verified("p", answers, 2, random.Random(0))
    assert len(got) == 2 and {r["chosen"] for r in got} == {"a", "b"} and len({r["rejected"] for r in got}) == 2
    every = pair_verified("p", answers, 10, random.Random(0))
    assert len(every) == 6 and len({(r["chosen"], r["rejected"]) for r in every}) == 6  # 2 correct x 3 incorrect
    assert {(r["chosen"], r["rejected"]) for r in every[:2]} == {(r["chosen"], r["rejected"]) for r in got}
    assert pair_verified("p", [("a", True), ("b", True)], 3, random.Random(0)) == []


class _LuckySampler(_AnswerSampler):
    """Per prompt: one sound right answer, one right answer after a wrong step, the rest wrong."""

    def generate(self, prompts, n, params):
        from types import SimpleNamespace

        self.calls += 1
        out = []
        for p in prompts:
            ans = self.answers[p[-1]["content"]]
            texts = ["2 + 2 = 4\n#### " + ans, "2 + 2 = 5\n#### " + ans] + [f"2 + 2 = 4\n#### {ans}1"] * (n - 2)
            out.append([SimpleNamespace(text=t, token_ids=[1], logprob_sum=0.0, finish_reason="stop") for t in texts])
        return out


def test_onpolicy_right_answer_after_a_wrong_step_is_never_chosen(stage_ctx, monkeypatch):
    import alignment.sampling
    from alignment.tasks.format import user_message
    from alignment.tasks.problems import ProblemSpec, training_problems

    specs = [{"source": "templates", "n": 6, "seed": 2}]
    answers = {user_message(p): p.answer for p in training_problems([ProblemSpec(**s) for s in specs])}
    monkeypatch.setattr(alignment.sampling, "build_sampler", lambda cfg, path, **kw: _LuckySampler(answers, right=0))
    onpolicy = {"enabled": True, "problems": specs, "n_samples": 4, "pairs_per_prompt": 8, "sampler": {"backend": "native"}}
    ctx = stage_ctx()
    fn, cfg = _cfg(onpolicy=onpolicy, pretrain={"sources": ["onpolicy", "synth"]})
    m = fn(cfg, ctx).metrics
    assert m["onpolicy_wrong_step_answers"] == 6 and m["onpolicy_pass_rate"] == pytest.approx(0.25)
    rows = [json.loads(l) for l in (ctx.stage_dir / "onpolicy.jsonl").read_text().splitlines()]
    # each prompt: the sound answer over the lucky one and over the (one distinct) wrong one
    assert len(rows) == 12 and all(r["chosen"].startswith("2 + 2 = 4\n") for r in rows)
    assert sum(r["rejected"].startswith("2 + 2 = 5\n") for r in rows) == 6
