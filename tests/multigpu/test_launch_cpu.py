"""The multi-process path on CPU: the SFT stage through the pipeline under ``accelerate=cpu_ddp``.

Two gloo ranks (alignment/launch.py starts them with torch.distributed.run when accelerate's
simple launcher gives one process) train the tiny model for two steps; the stage must complete,
its outputs must exist exactly once (rank 0 alone writes and publishes; no stray temp files from
the other rank) and the published weights must differ from the policy's.

Run: python -m pytest -q tests/multigpu   (about 20 s on a 2-core box; skip with YIALIGN_SKIP_MULTIPROC=1)
The GPU counterpart (ddp / fsdp2 on 2 cards) is bench/multiproc.py; see its docstring.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from alignment.artifacts import Manifest, read_jsonl
from alignment.pipeline import compose, run_pipeline

pytestmark = pytest.mark.skipif(os.environ.get("YIALIGN_SKIP_MULTIPROC") == "1",
                                reason="YIALIGN_SKIP_MULTIPROC=1: no 2-process launch")


def test_sft_stage_on_two_cpu_ranks(tmp_path, tiny_model, tiny_tokenizer, capfd):
    policy = tmp_path / "policy"
    tiny_model.save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    run_dir = tmp_path / "run"
    cfg = compose([
        f"run_dir={run_dir}", "stages=[sft_broad]", "device=cpu",
        f"stage.sft_broad.inputs.policy={policy}", "stage.sft_broad.accelerate=cpu_ddp",
        "stage.sft_broad.max_steps=2", "stage.sft_broad.per_device_train_batch_size=1",
        "stage.sft_broad.max_length=64", "stage.sft_broad.learning_rate=3e-3", "stage.sft_broad.logging_steps=1",
        "stage.sft_broad.save_steps=2", "stage.sft_broad.gradient_checkpointing=false", "stage.sft_broad.bf16=false",
        "data.sft_broad.target_count=16", "data.decontam.enabled=false",
    ])
    stages = run_pipeline(cfg)

    out = capfd.readouterr().out
    assert "--nproc_per_node=2" in out  # launch.py started two ranks itself (no mpirun)
    assert stages["sft_broad"]["status"] == "completed" and stages["sft_broad"]["metrics"]["steps"] == 2
    assert Manifest(run_dir).stages["sft_broad"]["status"] == "completed"
    stage_dir = run_dir / "sft_broad"
    # every output once, no temp folder/file left by either rank
    assert sorted(p.name for p in stage_dir.iterdir() if p.name.startswith(".") and p.name != ".result.json") == []
    assert len(read_jsonl(stage_dir / "dataset.jsonl")) == 16
    assert (stage_dir / "card.md").is_file() and (stage_dir / "model" / "config.json").is_file()
    log = json.loads((stage_dir / "train_log.json").read_text())
    assert [h["step"] for h in log if "loss" in h] == [1, 2]
    # the trained weights were published
    before, after = load_file(policy / "model.safetensors"), load_file(stage_dir / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed
