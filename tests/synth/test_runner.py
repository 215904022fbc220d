"""The synth stage and yialign-synth: outputs, byte-identical reruns, resume, workers, CLI,
and one real run with the tiny model as policy."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignment.stage_contract import InputArtifact, StageContext
from synth.search.tree import SearchConfig
from synth.runner import ProblemSpec, SynthConfig, run

SEARCH = SearchConfig(num_children=3, num_simulations=6)


def make_cfg(**kw):
    base = dict(problems=[ProblemSpec("templates", 6), ProblemSpec("gsm_symbolic", 3)], search=SEARCH, policy="reference", batch_problems=3)
    return SynthConfig(**{**base, **kw})


def make_ctx(stage_dir: Path, inputs=None):
    return StageContext(name="synth", run_dir=stage_dir.parent, stage_dir=stage_dir, inputs=inputs or {})


def digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_stage_writes_datasets_and_cards(tmp_path):
    res = run(make_cfg(), make_ctx(tmp_path / "synth"))
    out = tmp_path / "synth"
    assert res.outputs["dataset"] == res.outputs["sft"] == "sft.jsonl"
    assert res.metrics["problems"] == 9 and res.metrics["sft_records"] > 0 and res.metrics["pairs"] > 0
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert all(p["chosen_score"] > p["rejected_score"] and p["chosen"] != p["rejected"] for p in pairs)
    proc = [json.loads(x) for x in (out / "process.jsonl").read_text().splitlines()]
    assert all(len(r["steps"]) == len(r["values"]) == len(r["labels"]) for r in proc)
    assert any(0 in r["labels"] for r in proc) and any(1 in r["labels"] for r in proc)
    card = (out / "sft.card.md").read_text()
    assert card.startswith("---\n") and hashlib.sha256((out / "sft.jsonl").read_bytes()).hexdigest() in card
    try:
        from alignment.data.cards import validate_card
    except ImportError:
        return
    for name in ("sft", "pairs", "process"):
        validate_card(out / f"{name}.card.md")


def test_same_seed_and_config_give_byte_identical_files(tmp_path):
    run(make_cfg(), make_ctx(tmp_path / "a"))
    run(make_cfg(), make_ctx(tmp_path / "b"))
    run(make_cfg(seed=1), make_ctx(tmp_path / "c"))
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert a == b
    assert a["process.jsonl"] != c["process.jsonl"]


def test_resume_skips_finished_problems_and_config_change_restarts(tmp_path):
    out = tmp_path / "synth"
    run(make_cfg(), make_ctx(out))
    full = digests(out)
    work = out / ".synth-work"
    for f in sorted(work.glob("00000[3-8].json")):  # "interrupted" after 3 problems (one finished group of 3)
        f.unlink()
    res = run(make_cfg(), make_ctx(out))
    assert res.metrics["resumed_problems"] == 3
    assert digests(out) == full
    res = run(make_cfg(search=SearchConfig(num_children=2, num_simulations=4)), make_ctx(out))
    assert res.metrics["resumed_problems"] == 0  # a different config never reuses old results


def test_workers_give_the_same_bytes(tmp_path):
    run(make_cfg(problems=[ProblemSpec("templates", 4)], batch_problems=2), make_ctx(tmp_path / "one"))
    # fork: spawn would re-import torch/transformers in each worker (~7 s each on 2 cores)
    run(make_cfg(problems=[ProblemSpec("templates", 4)], batch_problems=2, workers=2, start_method="fork"), make_ctx(tmp_path / "two"))
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


@pytest.mark.parametrize("spec, match", [(ProblemSpec("asdiv", 2), "eval-only"), (ProblemSpec("templates", 2, split="heldout"), "held out")])
def test_held_out_and_eval_problems_are_refused(tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        run(make_cfg(problems=[spec]), make_ctx(tmp_path / "x"))


def test_cli_dry_run_recipe(tmp_path):
    from hydra import compose, initialize_config_dir

    from synth.cli import RECIPES, run_job

    with initialize_config_dir(config_dir=str(RECIPES / "synth"), version_base="1.3"):
        cfg = compose("dry_run", overrides=[f"out_dir={tmp_path}/dry", "job.problems=[{source: templates, n: 3}]"])
    summary = run_job(cfg)
    assert summary["metrics"]["problems"] == 3 and Path(summary["outputs"]["sft"]).is_file()
    assert json.loads((tmp_path / "dry" / "result.json").read_text())["metrics"] == summary["metrics"]
    with initialize_config_dir(config_dir=str(RECIPES / "synth"), version_base="1.3"):
        bad = compose("dry_run", overrides=[f"out_dir={tmp_path}/bad", "+job.simulations=3"])
    with pytest.raises(SystemExit, match="known keys of SynthConfig"):
        run_job(bad)


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "policy"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_stage_with_the_tiny_model_as_policy(tmp_path, tiny_checkpoint):
    pytest.importorskip("alignment.sampling.build")
    cfg = make_cfg(
        problems=[ProblemSpec("templates", 2)], policy="checkpoint", sampler={"backend": "native"}, batch_problems=2,
        search=SearchConfig(num_children=2, num_simulations=1, step_tokens=8, rollout_tokens=16),
    )
    ctx = make_ctx(tmp_path / "synth", {"policy": InputArtifact("policy", tiny_checkpoint, {"model": tiny_checkpoint}, {})})
    res = run(cfg, ctx)
    assert res.metrics["problems"] == 2 and res.metrics["tokens"] > 0
    rows = [json.loads(x) for x in (tmp_path / "synth" / "process.jsonl").read_text().splitlines()]
    assert rows and all(len(r["steps"]) == len(r["visits"]) for r in rows)  # the random model's steps were searched


@pytest.mark.parametrize("check_steps", [True, False])
def test_search_verifier_checks_steps_as_configured(tmp_path, check_steps):
    from alignment.tasks.problems import load_problems
    from synth.runner import _WORKER, PolicySpec, _init_worker

    problems = [p.to_dict() for p in load_problems("templates", "train", 2)]
    _init_worker(PolicySpec("reference", problems=problems), SEARCH, 0, 5.0, check_steps, str(tmp_path), False, 0)
    math = _WORKER["verifiers"]["math"]
    lucky = SimpleNamespace(answer="5", id="t")
    assert math.check_steps is check_steps
    assert math.verify(lucky, "89 - 17 = 76\n#### 5").passed is not check_steps  # a right answer after a wrong step
    assert make_cfg().check_steps is True  # the stage default: a verified solution states no wrong step
