"""Online DPO on the tiny MoE on CPU (alignment/train/online_dpo.py): a round samples with the real
native sampler, scores, pairs and trains; the next stage samples from the previous round's policy.

The reward model and verifier are scripted here and reached through ``_target_`` strings exactly as
the pipeline reaches reward.score / alignment.tasks.verify, so the hydra wiring is tested too.

Run: python -m pytest -q tests/train/test_dpo_online.py
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignment.sampling import SamplerConfig
from alignment.stage_contract import InputArtifact, StageContext
from alignment.tasks.format import task_message
from alignment.train.dpo import DPOTrainArgs
from alignment.train.online_dpo import OnlineDPOConfig, PromptsConfig, load_prompts, to_prompt_item
from alignment.train.pair_rule import PairRule


class LengthScorer:
    """Scripted reward model: longer answers score higher (what a length-biased RM would do)."""

    def __init__(self, model_path, device="cpu", per_char=0.1):
        assert Path(model_path).name == "rm", model_path  # the runner passes the reward input's model dir
        self.per_char = per_char

    def score(self, prompts, responses):
        assert len(prompts) == len(responses)
        return [self.per_char * len(r) for r in responses]


class DigitVerifier:
    """Scripted verifier: passed when the reference answer appears in the response."""

    def __init__(self, kind):
        assert kind == "math"

    def verify(self, problem, response):
        return SimpleNamespace(passed=problem.answer in response, error_kind=None)


TARGET = __name__  # however pytest imported this module, hydra can import it under that name


def _policy_dir(tmp_path, tokenizer):
    from tests.fixtures_model import build_tiny_model

    model = build_tiny_model(seed=0)
    path = tmp_path / "sft_hard" / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _cfg(prompt_file):
    return OnlineDPOConfig(
        prompts=PromptsConfig(path=str(prompt_file)),
        sampler=SamplerConfig(backend="native", max_prompts_per_batch=4),
        scorer={"_target_": f"{TARGET}.LengthScorer"},
        verifier={"_target_": f"{TARGET}.DigitVerifier"},
        n_samples=4,
        max_new_tokens=10,
        pairs=PairRule(min_gap=0.1),
        train=DPOTrainArgs(learning_rate=1e-3, warmup_ratio=0, per_device_train_batch_size=4,
                           gradient_accumulation_steps=1, max_length=96, logging_steps=1, save_steps=1000),
        kl_samples=8,
    )


def _ctx(tmp_path, name, policy_dir):
    rm = tmp_path / "reward" / "rm"
    rm.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=name, run_dir=tmp_path, stage_dir=tmp_path / name, device="cpu", seed=0,
        inputs={
            "policy": InputArtifact("policy", policy_dir.parent, {"model": policy_dir}, {}),
            "reward": InputArtifact("reward", rm.parent, {"model": rm}, {}),
        },
    )


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_two_online_rounds_on_tiny_model(tmp_path, tiny_tokenizer, monkeypatch):
    import alignment.sampling
    from alignment.train import online_dpo

    prompt_file = tmp_path / "prompts.jsonl"
    rows = [{"id": "m1", "prompt": "What is 2 + 3?", "kind": "math", "answer": "5"},
            {"id": "m2", "prompt": "What is 4 + 4?", "kind": "math", "answer": "8"},
            {"id": "c1", "prompt": "Say hello."},
            {"id": "c2", "prompt": "Name a colour."}]
    prompt_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    sampled_from, closed = [], []
    real_build = alignment.sampling.build_sampler

    def recording_build(cfg, path, **kw):
        sampled_from.append(Path(path))
        sampler = real_build(cfg, path, **kw)
        sampler.close = lambda: closed.append(Path(path))  # stands in for a vLLM engine's close()
        return sampler

    monkeypatch.setattr(alignment.sampling, "build_sampler", recording_build)

    # ---- round 1 (stage dpo_r1, input policy = sft_hard)
    policy = _policy_dir(tmp_path, tiny_tokenizer)
    ctx1 = _ctx(tmp_path, "dpo_r1", policy)
    res1 = online_dpo.run(_cfg(prompt_file), ctx1)
    assert sampled_from == [policy]
    assert closed == [policy], "the round closes its sampler before the reward model loads"

    pairs = [json.loads(line) for line in (ctx1.stage_dir / res1.outputs["pairs"]).read_text().splitlines()]
    assert pairs, "a round on 4 prompts x 4 samples must keep at least one pair"
    for p in pairs:
        assert p["chosen"] != p["rejected"] and p["round"] == 1
        assert p["chosen_passed"] is not False  # verifier veto: a failed answer is never chosen
        assert p["why"] == "verifier" or p["chosen_reward"] - p["rejected_reward"] >= 0.1
    m = res1.metrics
    assert m["pairs"] == len(pairs) and m["samples"] == 16 and m["verified_samples"] == 8
    for key in ("rm_score_mean", "rm_score_max", "pair_margin_mean", "dpo_reward_accuracy", "dpo_reward_margin",
                "kl_ref_k1", "kl_ref_k3", "dpo_aux_loss", "dpo_post_reward_accuracy", "dpo_post_reward_margin"):
        assert key in m and m[key] == m[key], key  # present and not NaN
    assert m["dpo_steps"] >= 1 and m["dpo_aux_loss"] > 0  # the MoE aux loss joined the DPO loss
    assert m["kl_ref_k3"] > 0  # the policy moved away from its reference
    assert m["dpo_post_reward_margin"] > 0  # ... towards the chosen answers

    model1 = ctx1.stage_dir / res1.outputs["model"]
    before, after = _weights(policy), _weights(model1)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)}/{len(before)} tensors changed"

    # ---- a rerun of the finished stage skips the round (no sampling, same outputs)
    res1b = online_dpo.run(_cfg(prompt_file), ctx1)
    assert sampled_from == [policy] and res1b.outputs == res1.outputs

    # ---- a round killed during training resumes from its scored candidates (no resampling)
    import shutil

    (ctx1.stage_dir / "round1" / "metrics.json").unlink()
    shutil.rmtree(ctx1.stage_dir / "round1" / "model")
    res1c = online_dpo.run(_cfg(prompt_file), ctx1)
    assert sampled_from == [policy] and res1c.metrics["pairs"] == res1.metrics["pairs"]
    assert _weights(ctx1.stage_dir / res1c.outputs["model"]).keys() == after.keys()

    # ---- round 2 (stage dpo_r2, input policy = dpo_r1's model) samples from the round-1 policy
    ctx2 = _ctx(tmp_path, "dpo_r2", model1)
    res2 = online_dpo.run(_cfg(prompt_file), ctx2)
    assert sampled_from == [policy, model1]
    cands = [json.loads(line) for line in (ctx2.stage_dir / "round1" / "candidates.jsonl").read_text().splitlines()]
    assert [c["id"] for c in cands] == ["m1", "m2", "c1", "c2"] and all(len(c["samples"]) == 4 for c in cands)
    assert res2.metrics["dpo_steps"] >= 1 or res2.metrics.get("dpo_skipped") == 1
    from alignment.data.cards import validate_card

    card = validate_card(ctx2.stage_dir / res2.outputs["pairs_card"])
    assert card["records"] == res2.metrics["pairs"] and card["stage"] == "dpo_r2"


def test_prompt_items_from_rows_problems_and_strings(tmp_path):
    problem = SimpleNamespace(id="gsm/1", kind="math", prompt="1+1?", answer="2", tests=None)
    item = to_prompt_item(problem, 0, "src", chat=True)
    # a task is worded as SFT, synth and eval word it: the math instruction, then the problem
    assert item.problem is problem and item.kind == "math"
    assert item.prompt == [{"role": "user", "content": task_message("math", "1+1?")}]
    item = to_prompt_item({"prompt": "hi"}, 3, "src", chat=False)
    assert (item.id, item.prompt, item.problem) == ("3", "hi", None)  # free prompts (no verifier) go as they are
    with pytest.raises(ValueError, match="unknown task kind 'poem'"):
        to_prompt_item({"prompt": "x", "kind": "poem", "answer": "y"}, 0, "src", chat=True)
    item = to_prompt_item({"id": "x", "prompt": "2+2?", "kind": "math", "answer": "4"}, 0, "src", chat=True)
    assert item.problem.answer == "4"
    with pytest.raises(ValueError, match="item 1 has no usable 'prompt'"):
        to_prompt_item({"text": "hi"}, 1, "src", chat=True)
    with pytest.raises(ValueError, match="no 'kind'"):
        to_prompt_item({"prompt": "2+2?", "answer": "4"}, 0, "src", chat=True)

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    ctx = StageContext(name="dpo_r1", run_dir=tmp_path, stage_dir=tmp_path / "s", inputs={})
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        load_prompts(PromptsConfig(path=str(bad)), ctx)
    with pytest.raises(ValueError, match="give the stage an input named 'prompts'"):
        load_prompts(PromptsConfig(), ctx)


def test_prompts_from_task_problems_in_the_task_format(tmp_path):
    from alignment.errors import ConfigError
    from alignment.tasks.problems import ProblemSpec

    ctx = StageContext(name="dpo_r1", run_dir=tmp_path, stage_dir=tmp_path / "s", inputs={})
    items = load_prompts(PromptsConfig(problems=[ProblemSpec("templates", 3, seed=3), ProblemSpec("gsm_symbolic", 2)]), ctx)
    assert [it.kind for it in items] == ["math"] * 5 and all(it.problem.answer for it in items)
    assert items[0].prompt == [{"role": "user", "content": task_message("math", items[0].problem.prompt)}]
    with pytest.raises(ConfigError, match="either 'problems' or 'path'"):
        load_prompts(PromptsConfig(problems=[ProblemSpec("templates", 3)], path="p.jsonl"), ctx)
    with pytest.raises(ConfigError, match="train splits only"):  # eval instances are never trained on
        load_prompts(PromptsConfig(problems=[ProblemSpec("templates", 3, split="train_heldout")]), ctx)


class _ProbeSampler:
    """Scripted policy for the frontier probe: prompt i answers right in ``rights[i]`` of its samples."""

    def __init__(self, rights):
        self.rights, self.calls = rights, []

    def generate(self, prompts, n, params):
        self.calls.append((len(prompts), n))
        out = []
        for p in prompts:
            k = self.rights[p[-1]["content"]]
            out.append([SimpleNamespace(text="right" if j < k else "wrong", token_ids=[1], logprob_sum=0.0,
                                        finish_reason="stop") for j in range(n)])
        return out


def test_frontier_probe_keeps_prompts_the_policy_solves_sometimes():
    from alignment.train.online_dpo import FrontierSpec, PromptItem, select_frontier

    def item(name, known=True):
        problem = SimpleNamespace(answer="x") if known else None
        return PromptItem(id=name, prompt=[{"role": "user", "content": name}], kind="math" if known else None, problem=problem)

    items = [item("never"), item("once"), item("half"), item("always"), item("chat", known=False), item("thrice")]
    sampler = _ProbeSampler({"never": 0, "once": 1, "half": 2, "always": 4, "thrice": 3})
    verify = lambda it, text: text == "right"  # noqa: E731
    kept, m = select_frontier(sampler, items, FrontierSpec(enabled=True, probe_samples=4), SimpleNamespace(), verify)
    # 0/4 and 4/4 give no verifier pair; the free prompt has no verifier and stays (the RM judges it)
    assert [it.id for it in kept] == ["once", "half", "chat", "thrice"]
    assert sampler.calls == [(5, 4)]  # only the prompts with a verifier are probed
    assert m["frontier_pool"] == 6 and m["frontier_kept"] == 4
    assert m["frontier_all_solved"] == 1 and m["frontier_none_solved"] == 1
    assert m["frontier_probe_pass_rate"] == pytest.approx((0 + 1 + 2 + 4 + 3) / 20)
    kept, _ = select_frontier(sampler, items, FrontierSpec(enabled=True, probe_samples=4, min_pass=0.5, prompts=2),
                              SimpleNamespace(), verify)
    assert [it.id for it in kept] == ["half", "chat"]  # pass rate >= 0.5, at most 2, pool order
    with pytest.raises(ValueError, match="min_pass <= max_pass"):
        select_frontier(sampler, items, FrontierSpec(min_pass=0.9, max_pass=0.1), SimpleNamespace(), verify)


def test_default_verifier_does_not_pass_a_right_answer_after_a_wrong_step():
    from hydra.utils import instantiate

    from alignment.tasks.problems import Problem
    from alignment.train.online_dpo.rollout import PromptItem, VerifierPool

    verify = VerifierPool(lambda kind: instantiate(OnlineDPOConfig().verifier, kind))
    item = PromptItem(id="p", prompt="q", kind="math", problem=Problem(id="p", kind="math", prompt="q", answer="5"))
    assert verify(item, "89 - 17 = 72\n72 / 16 rounds up to 5\n#### 5") is True
    # the f57075a pair that taught a wrong subtraction: right answer, wrong step
    assert verify(item, "89 - 17 = 76\n76 / 16 rounds up to 5\n#### 5") is False
    assert verify(item, "89 - 17 = 72\n#### 4") is False
