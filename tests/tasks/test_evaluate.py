"""The eval stage: pass@k estimator, held-out accuracy with scripted policies, and a run on
tiny checkpoints of two "stages" with flat metrics."""

import json

import pytest

from alignment.stage_contract import InputArtifact, StageContext
from alignment.tasks.format import plain_render
from alignment.tasks.evaluate import EvalConfig, EvalSetSpec, evaluate_sampler, load_eval_sets, paired_comparisons, pass_at_k, run
from synth.search.scripted_sampler import ScriptedSampler


@pytest.mark.parametrize("n, c, k, want", [(10, 0, 1, 0.0), (10, 10, 5, 1.0), (5, 2, 1, 0.4), (4, 1, 2, 0.5), (10, 3, 10, 1.0)])
def test_pass_at_k(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 5"):
        pass_at_k(3, 1, 5)


def test_training_splits_are_refused():
    with pytest.raises(ValueError, match="held-out or test.*split train_heldout"):
        load_eval_sets([EvalSetSpec("templates", "train", 3)])


def test_math_set_samples_pass_at_k_when_asked():
    # unseen instances of a trained family, with sampled pass@k; the held-out family stays greedy-only
    specs = [EvalSetSpec("templates", "train_heldout", 5, num_samples=3), EvalSetSpec("templates", "heldout", 4)]
    sets = load_eval_sets(specs)
    assert [name for name, _ in sets] == ["templates_train_heldout", "templates_heldout"]
    sampler = ScriptedSampler([p for _, ps in sets for p in ps], p_correct=1.0)
    metrics, rows = evaluate_sampler(sampler, plain_render, sets, EvalConfig(sets=specs, num_samples=0, pass_k=[1, 3]))
    assert metrics["templates_train_heldout/pass@3_sampled"] == 1.0 and metrics["templates_train_heldout/acc"] == 1.0
    assert not any(k.startswith("templates_heldout/pass@") for k in metrics)
    assert len(rows) == 5 + 5 * 3 + 4


def test_a_set_can_have_its_own_response_budget():
    class Recorder(ScriptedSampler):
        budgets: list = []

        def generate(self, prompts, n, params):
            self.budgets.append(params.max_new_tokens)
            return super().generate(prompts, n, params)

    specs = [EvalSetSpec("templates", "heldout", 2, max_new_tokens=24), EvalSetSpec("humaneval", "test", 1)]
    sets = load_eval_sets(specs)
    sampler = Recorder([p for _, ps in sets for p in ps], p_correct=1.0)
    evaluate_sampler(sampler, plain_render, sets, EvalConfig(sets=specs, max_new_tokens=200, num_samples=1, pass_k=[1]))
    assert sampler.budgets == [24, 200, 200]  # templates greedy; humaneval greedy + sampled at the stage's budget


@pytest.mark.parametrize("p_correct, want", [(1.0, 1.0), (0.0, 0.0)])
def test_heldout_accuracy_with_scripted_policy(p_correct, want):
    sets = load_eval_sets([EvalSetSpec("templates", "heldout", 6), EvalSetSpec("humaneval", "test", 2)])
    sampler = ScriptedSampler([p for _, ps in sets for p in ps], p_correct=p_correct)
    cfg = EvalConfig(sets=[], num_samples=2, pass_k=[1, 2])
    metrics, rows = evaluate_sampler(sampler, plain_render, sets, cfg)
    assert metrics["templates_heldout/acc"] == want and metrics["templates_heldout/n"] == 6
    lo, hi = metrics["templates_heldout/acc_lo"], metrics["templates_heldout/acc_hi"]
    assert lo <= want <= hi and hi - lo > 0.2  # n=6: a wide interval
    assert metrics["templates_heldout/format"] == 1.0  # scripted answers, right or wrong, are readable
    assert metrics["humaneval_test/pass@1"] == want
    assert metrics["humaneval_test/pass@2_sampled"] == want
    assert len(rows) == 6 + 2 + 2 * 2


def test_eval_stage_on_two_checkpoints(tmp_path, tiny_model, tiny_tokenizer):
    pytest.importorskip("alignment.sampling.build")
    path = tmp_path / "ckpt"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    inputs = {name: InputArtifact(name, path, {"model": path}, {}) for name in ("sft_broad", "sft_hard")}
    ctx = StageContext(name="eval", run_dir=tmp_path, stage_dir=tmp_path / "eval", inputs=inputs)
    # short prompts only: the code path (sandbox, pass@k) is covered with the scripted policy above
    cfg = EvalConfig(sets=[EvalSetSpec("asdiv", "test", 1), EvalSetSpec("templates", "heldout", 1)],
                     sampler={"backend": "native"}, max_new_tokens=4, num_samples=0)
    res = run(cfg, ctx)
    for stage in ("sft_broad", "sft_hard"):
        assert 0.0 <= res.metrics[f"{stage}/asdiv_test/acc"] <= 1.0
        assert res.metrics[f"{stage}/templates_heldout/n"] == 1
    assert all(isinstance(v, (int, float)) for v in res.metrics.values())  # flat
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["models"] == ["sft_broad", "sft_hard"]


def test_format_compliance_separates_unreadable_from_wrong():
    from alignment.tasks.problems import Problem
    from alignment.tasks.verify import get_verifier

    math_v = get_verifier("math")
    p = Problem(id="t1", kind="math", prompt="What is 2+3?", answer="5")
    assert math_v.verify(p, "so the answer is \\boxed{6}").formatted  # wrong but readable
    assert not math_v.verify(p, "I like turtles").formatted
    assert math_v.verify(p, "\\boxed{5}").to_dict()["formatted"] is True


def test_paired_comparisons_follow_input_order():
    def rows(model, passed):
        return [{"model": model, "set": "s", "problem_id": i, "mode": "greedy", "passed": ok, "error_kind": None}
                for i, ok in enumerate(passed)]

    base = [False] * 20
    better = [True] * 12 + [False] * 8
    same = list(better)
    out = paired_comparisons(rows("base", base) + rows("sft", better) + rows("dpo", same)
                             + [{"model": "sft", "set": "s", "problem_id": 0, "mode": "sampled", "passed": False,
                                 "error_kind": None}], ["base", "sft", "dpo"])
    assert out["sft/s/delta"] == pytest.approx(0.6) and out["sft/s/p_mcnemar"] < 1e-3
    assert out["dpo/s/delta"] == 0.0 and out["dpo/s/p_mcnemar"] == 1.0
    assert "base/s/delta" not in out
    assert out["sft/s/format_delta"] == 0.0  # rows without a format flag count as formatted


def test_paired_comparisons_against_a_baseline():
    """A sweep (eval compare_to): every candidate is tested against the one baseline, not its neighbour."""
    def rows(model, passed):
        return [{"model": model, "set": "s", "problem_id": i, "mode": "greedy", "passed": ok, "error_kind": None}
                for i, ok in enumerate(passed)]

    base = [True] * 10 + [False] * 10
    worse = [False] * 20
    better = [True] * 20
    out = paired_comparisons(rows("sft_hard", base) + rows("lr_a", worse) + rows("lr_b", better),
                             ["sft_hard", "lr_a", "lr_b"], baseline="sft_hard")
    assert out["lr_a/s/delta"] == pytest.approx(-0.5) and out["lr_b/s/delta"] == pytest.approx(0.5)  # not lr_b vs lr_a (+1.0)
    assert "sft_hard/s/delta" not in out


def test_last_checkpoint_against_the_first():
    """A chain's end against its start (the "not worse than base" check): explicit pairs, own key."""
    from alignment.tasks.evaluate import FINAL_VS_FIRST

    def rows(model, passed):
        return [{"model": model, "set": "s", "problem_id": i, "mode": "greedy", "passed": ok, "error_kind": None}
                for i, ok in enumerate(passed)]

    base, mid, last = [True] * 12 + [False] * 8, [True] * 10 + [False] * 10, [True] * 4 + [False] * 16
    all_rows = rows("base", base) + rows("sft", mid) + rows("dpo", last)
    out = paired_comparisons(all_rows, ["base", "sft", "dpo"], pairs=[("base", "dpo")], key=FINAL_VS_FIRST)
    assert out == {k: v for k, v in out.items() if k.startswith("dpo/s/vs_first_")}  # nothing else, no stage keys
    assert out["dpo/s/vs_first_delta"] == pytest.approx(-0.4) and out["dpo/s/vs_first_p_mcnemar"] < 0.01
    # each step alone is smaller (-0.1, then -0.3): the end-to-end test is its own number
    steps = paired_comparisons(all_rows, ["base", "sft", "dpo"])
    assert steps["sft/s/delta"] == pytest.approx(-0.1) and steps["dpo/s/delta"] == pytest.approx(-0.3)


def test_compare_to_must_be_evaluated(tmp_path):
    from alignment.errors import ConfigError

    inputs = {"sft_hard": InputArtifact("sft_hard", tmp_path / "m", {}, {})}
    ctx = StageContext(name="eval", run_dir=tmp_path, stage_dir=tmp_path / "eval", inputs=inputs)
    cfg = EvalConfig(sets=[EvalSetSpec(source="templates", split="train_heldout", n=4)], compare_to="sft_broad")
    with pytest.raises(ConfigError, match="compare_to 'sft_broad' is not one of the checkpoints evaluated"):
        run(cfg, ctx)


def test_format_compliance_gets_its_own_paired_test():
    # what the tiny demo shows: no answer right before or after, but sft teaches the answer line
    def rows(model, formatted):
        return [{"model": model, "set": "s", "problem_id": i, "mode": "greedy", "passed": False, "formatted": f,
                 "error_kind": None} for i, f in enumerate(formatted)]

    out = paired_comparisons(rows("base", [False] * 32) + rows("sft", [True] * 17 + [False] * 15), ["base", "sft"])
    assert out["sft/s/delta"] == 0.0 and out["sft/s/p_mcnemar"] == 1.0
    assert out["sft/s/format_delta"] == pytest.approx(17 / 32) and out["sft/s/format_p_mcnemar"] == pytest.approx(2 / 2**17, abs=1e-6)  # exact: 2 x 0.5^17


def test_checkpoints_are_compared_in_pipeline_order(tmp_path):
    from omegaconf import OmegaConf

    from alignment.tasks.evaluate import _in_pipeline_order

    # a recipe's inputs mapping lists the stage defaults first and the pipeline's additions after
    inputs = {n: InputArtifact(n, tmp_path / n, {}, {}) for n in ("sft_broad", "dpo_r2", "base")}
    root = OmegaConf.create({"pipeline": {"order": ["base", "sft_broad", "synth", "dpo_r2", "eval"]}})
    ctx = StageContext(name="eval", run_dir=tmp_path, stage_dir=tmp_path / "eval", inputs=inputs, root=root)
    assert _in_pipeline_order(ctx) == ["base", "sft_broad", "dpo_r2"]


def test_sets_with_one_budget_decode_in_one_call():
    from alignment.sampling.base import SamplingParams
    from alignment.tasks.evaluate import generate_grouped

    class Recorder:  # stands in for a sampler: the grouping, not decoding, is under test
        def __init__(self):
            self.calls = []

        def generate(self, prompts, n, params):
            self.calls.append((list(prompts), n, params.max_new_tokens))
            return [[f"{p}#{j}" for j in range(n)] for p in prompts]

    short, long_ = SamplingParams(max_new_tokens=160, temperature=0.0), SamplingParams(max_new_tokens=256, temperature=0.0)
    rec = Recorder()
    out = generate_grouped(rec, [(["a", "b"], 1, short), (["c"], 1, long_), (["d", "e", "f"], 1, short), ([], 1, long_)])
    assert [(c[0], c[2]) for c in rec.calls] == [(["a", "b", "d", "e", "f"], 160), (["c"], 256)]
    assert out == [[["a#0"], ["b#0"]], [["c#0"]], [["d#0"], ["e#0"], ["f#0"]], []]
    rec.calls.clear()
    assert generate_grouped(rec, [(["a"], 4, short), (["b"], 2, short)]) == [[["a#0", "a#1", "a#2", "a#3"]], [["b#0", "b#1"]]]
    assert len(rec.calls) == 2  # another sample count is another call


def test_a_checkpoint_is_verified_while_the_next_one_decodes(tmp_path, monkeypatch):
    import threading

    import alignment.tasks.evaluate as ev

    class Scripted:  # stands in for a loaded policy: the stage's scheduling, not decoding, is under test
        def generate(self, prompts, n, params):
            from alignment.sampling.base import Sample

            return [[Sample(text="#### 0", token_ids=[], logprob_sum=0.0, finish_reason="stop") for _ in range(n)] for _ in prompts]

    built, second_built, overlap = [], threading.Event(), {}

    def build_policy(path, cfg, device):
        built.append(path)
        if len(built) == 2:
            second_built.set()
        return Scripted(), plain_render

    real_judge = ev.judge_sets

    def judge(decoded, cfg, prefix="", sample_s=0.0):
        if prefix == "sft_broad":  # the first checkpoint's verification waits for the second's decode
            overlap["seen"] = second_built.wait(timeout=10)
            overlap["thread"] = threading.current_thread().name
        return real_judge(decoded, cfg, prefix, sample_s)

    monkeypatch.setattr(ev, "_build_policy", build_policy)
    monkeypatch.setattr(ev, "judge_sets", judge)
    monkeypatch.setattr(ev, "close_sampler", lambda s: None)
    inputs = {n: InputArtifact(n, tmp_path / n, {"model": tmp_path / n}, {}) for n in ("sft_broad", "sft_hard")}
    ctx = StageContext(name="eval", run_dir=tmp_path, stage_dir=tmp_path / "eval", inputs=inputs)
    cfg = EvalConfig(sets=[EvalSetSpec("templates", "heldout", 3)], num_samples=0)
    res = ev.run(cfg, ctx)
    assert overlap == {"seen": True, "thread": overlap["thread"]} and overlap["thread"].startswith("eval-verify")
    for name in ("sft_broad", "sft_hard"):
        assert res.metrics[f"{name}/templates_heldout/n"] == 3
    assert res.metrics["sft_hard/templates_heldout/delta"] == 0.0  # paired test still runs on the collected rows


def test_math_sets_report_right_answers_after_a_wrong_step():
    from alignment.sampling.base import Sample

    specs = [EvalSetSpec("templates", "heldout", 4)]
    sets = load_eval_sets(specs)
    answers = {plain_render(p): p.answer for p in sets[0][1]}

    class Lucky:  # stands in for a policy: every answer right, the first two after a wrong step
        def generate(self, prompts, n, params):
            steps = ["2 + 2 = 5", "2 + 2 = 5", "2 + 2 = 4", "2 + 2 = 4"]
            return [[Sample(f"{steps[i]}\n#### {answers[p]}", [], 0.0, "stop")] * n for i, p in enumerate(prompts)]

    metrics, _ = evaluate_sampler(Lucky(), plain_render, sets, EvalConfig(sets=specs, num_samples=0))
    assert metrics["templates_heldout/acc"] == 1.0  # the eval's verdict is the final answer
    assert metrics["templates_heldout/wrong_step_share"] == 0.5
