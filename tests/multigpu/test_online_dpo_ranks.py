"""Online DPO on 2 CPU ranks (``stage.dpo_r1.accelerate=cpu_ddp``) against the same round in 1 process.

The tiny_cpu dpo_r1 block (frontier probe on; 7 template problems, 5 kept, 3 samples each) runs through the
pipeline twice: under 2 gloo ranks, and in this process with ``prompt_seeds=true`` (the per-prompt
seeds the ranks use). Checked: every prompt is probed and sampled exactly once across the ranks, by
the rank its pool index strides to, no two ranks (or prompts) share a seed; the gathered candidates
are in pool order; one ``candidates.jsonl`` / ``pairs.jsonl`` and one published model (rank 0),
which trained; and the candidates and pairs equal the 1-process run's. Only the DPO step differs
(2 ranks x per-device batch is a larger global batch), so the models are not compared.

Run: python -m pytest -q tests/multigpu/test_online_dpo_ranks.py   (about 40 s on a 2-core box;
skip with YIALIGN_SKIP_MULTIPROC=1)
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from alignment.artifacts import Manifest, read_jsonl
from alignment.pipeline import compose, run_pipeline
from alignment.train.online_dpo import prompt_seed

pytestmark = pytest.mark.skipif(os.environ.get("YIALIGN_SKIP_MULTIPROC") == "1",
                                reason="YIALIGN_SKIP_MULTIPROC=1: no 2-process launch")


class LengthScorer:
    """Scripted reward model (reached by ``_target_`` in every rank): longer answers score higher."""

    def __init__(self, model_path, device="cpu", **_):
        pass

    def score(self, prompts, responses):
        return [0.1 * len(r) for r in responses]


def _overrides(run_dir, policy, rm, device):
    s = "stage.dpo_r1"
    return [
        f"run_dir={run_dir}", "stages=[dpo_r1]", f"device={device}",
        f"{s}.inputs.policy={policy}", f"{s}.inputs.reward={rm}",
        f"{s}.scorer._target_={__name__}.LengthScorer",
        f"{s}.prompts.problems=[{{source: templates, n: 7, seed: 3}}]",  # odd: the ranks' shares differ
        f"{s}.frontier.prompts=5", f"{s}.n_samples=3", f"{s}.max_new_tokens=8",
        f"{s}.train.max_steps=2", f"{s}.train.per_device_train_batch_size=2", f"{s}.kl_samples=4",
    ]


def test_online_dpo_round_on_two_cpu_ranks(tmp_path, tiny_model, tiny_tokenizer, capfd):
    check_two_rank_round(tmp_path, tiny_model, tiny_tokenizer, capfd, accelerate="cpu_ddp", device="cpu")


def check_two_rank_round(tmp_path, model, tokenizer, capfd, accelerate: str, device: str, exact: bool = True):
    """Run dpo_r1 on 2 ranks and in 1 process and check the invariants of the module docstring.

    ``exact=False`` (GPUs: the fused MoE's atomic adds may flip a draw between two runs) skips the
    sample-for-sample comparison with the 1-process run and keeps the rest."""
    policy, rm = tmp_path / "policy", tmp_path / "rm"
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    rm.mkdir()
    (rm / "README").write_text("stand-in: the scorer is scripted")

    run2 = tmp_path / "ranks2"
    stages = run_pipeline(compose(_overrides(run2, policy, rm, device) + [f"stage.dpo_r1.accelerate={accelerate}",
                                                                           "stage.dpo_r1.num_processes=2"]))
    out = capfd.readouterr().out
    if accelerate == "cpu_ddp":
        assert "--nproc_per_node=2" in out  # launch.py started two ranks
    assert stages["dpo_r1"]["status"] == "completed"
    assert Manifest(run2).stages["dpo_r1"]["status"] == "completed"
    # rank 0 alone published the model, once
    assert out.count("rank 0 of 2 published") == 1, out[-3000:]

    # ---- the DPO step trained under the launch and rank 0 published it
    before = load_file(policy / "model.safetensors")
    after = load_file(run2 / "dpo_r1" / "round1" / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed
    assert stages["dpo_r1"]["metrics"]["dpo_steps"] == 2

    run1 = tmp_path / "ranks1"
    stages1 = run_pipeline(compose(_overrides(run1, policy, rm, device) + ["stage.dpo_r1.prompt_seeds=true"]))
    assert stages1["dpo_r1"]["status"] == "completed"

    r2, r1 = run2 / "dpo_r1" / "round1", run1 / "dpo_r1" / "round1"
    cands2, cands1 = read_jsonl(r2 / "candidates.jsonl"), read_jsonl(r1 / "candidates.jsonl")
    ids = [c["id"] for c in cands2]
    assert len(ids) == 5 and len(set(ids)) == 5

    # ---- who sampled what: every prompt once, by the rank its index strides to; no shared seed
    shards = json.loads((r2 / "shards.json").read_text())
    assert shards["world"] == 2 and [r["rank"] for r in shards["ranks"]] == [0, 1]
    from omegaconf import OmegaConf

    from alignment.train.online_dpo.round import _round_seed

    round_seed = _round_seed(int(OmegaConf.load(run2 / "config.yaml").seed), "dpo_r1", 1)
    for rec in shards["ranks"]:
        assert rec["sampled"] == ids[rec["rank"]::2]  # gathered candidates are in pool order
        # seeded by the prompt's global index, not the rank
        assert rec["seeds"] == [prompt_seed(round_seed, i) for i in range(rec["rank"], 5, 2)]
    sampled = [i for r in shards["ranks"] for i in r["sampled"]]
    assert sorted(sampled) == sorted(ids)
    probed = [i for r in shards["ranks"] for i in r["probed"]]
    assert len(probed) == len(set(probed)) == 7  # the whole pool probed once
    seeds = [s for r in shards["ranks"] for s in r["seeds"] + r["probe_seeds"]]
    assert len(seeds) == len(set(seeds)) == 5 + 7
    assert not set(shards["ranks"][0]["seeds"]) & set(shards["ranks"][1]["seeds"])

    # ---- one file of each kind, written by rank 0; no temp files left
    stage2 = run2 / "dpo_r1"
    assert sorted(str(p.relative_to(stage2)) for p in stage2.rglob("pairs.jsonl")) == ["pairs.jsonl", "round1/pairs.jsonl"]
    assert [p.name for p in stage2.rglob("candidates.jsonl")] == ["candidates.jsonl"]
    assert [p.name for p in r2.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in stage2.iterdir() if p.name.startswith(".")] == []

    # ---- the same samples and pairs as one process with the same per-prompt seeds
    assert [c["id"] for c in cands1] == ids
    if not exact:
        return
    for a, b in zip(cands2, cands1):
        assert a["prompt"] == b["prompt"]
        for sa, sb in zip(a["samples"], b["samples"], strict=True):
            assert (sa["token_ids"], sa["text"], sa["reward"], sa["passed"]) == (sb["token_ids"], sb["text"], sb["reward"], sb["passed"])
            assert sa["logprob_sum"] == pytest.approx(sb["logprob_sum"], abs=1e-4)
    pairs2, pairs1 = read_jsonl(r2 / "pairs.jsonl"), read_jsonl(r1 / "pairs.jsonl")
    assert pairs2 and pairs2 == pairs1


def test_prompt_seeds_are_distinct_per_prompt():
    for s in (0, 7, 2**31 - 1):
        one_round = [prompt_seed(s, i) for i in range(5000)]
        assert len(set(one_round)) == 5000 and all(0 <= x < 2**31 for x in one_round)
