"""The pipeline: skip/rerun on config change, downstream invalidation, resume, kill safety, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignment.artifacts import Manifest, read_jsonl
from alignment.pipeline import PipelineError, compose, main, plan, run_pipeline
from tests.pipeline.stages import test_recipe as recipe
from tests.pipeline.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def _statuses(run_dir):
    return {k: v["status"] for k, v in Manifest(run_dir).stages.items()}


def test_runs_all_stages_and_writes_manifest(tmp_path, capsys):
    stages = run_pipeline(recipe(str(tmp_path)))
    assert {k: v["status"] for k, v in stages.items()} == {"numbers": "completed", "total": "completed", "train": "completed"}
    m = json.loads((tmp_path / "manifest.json").read_text())
    entry = m["stages"]["total"]
    assert entry["metrics"] == {"sum": 45, "rows": 10}
    assert entry["outputs"] == {"sum": "sum.json"}
    assert set(entry["input_hashes"]) == {"numbers"} and len(entry["config_hash"]) == 16
    assert entry["wall_time_s"] >= 0
    assert json.loads((tmp_path / "total" / "sum.json").read_text()) == {"sum": 45}
    out = capsys.readouterr().out
    assert "[2/3] total: done" in out
    assert any(line.startswith("stage ") and "status" in line for line in out.splitlines())  # final table


def test_rerun_skips_unchanged_and_reruns_changed_and_downstream(tmp_path, capsys):
    run_pipeline(recipe(str(tmp_path)))
    first = Manifest(tmp_path).stages
    capsys.readouterr()
    run_pipeline(recipe(str(tmp_path)))
    out = capsys.readouterr().out
    assert out.count("cached") == 3
    assert Manifest(tmp_path).stages["train"]["finished"] == first["train"]["finished"]

    # change the middle stage: it and everything downstream rerun, the first stage stays cached
    run_pipeline(recipe(str(tmp_path), total={"scale": 2}))
    out = capsys.readouterr().out
    assert "[1/3] numbers: cached" in out
    assert "[2/3] total: running" in out and "[3/3] train: running" in out
    assert json.loads((tmp_path / "total" / "sum.json").read_text()) == {"sum": 90}


def test_changed_upstream_output_reruns_downstream(tmp_path, capsys):
    run_pipeline(recipe(str(tmp_path)))
    run_pipeline(recipe(str(tmp_path), numbers={"offset": 1}))
    out = capsys.readouterr().out
    assert "[2/3] total: running" in out
    assert Manifest(tmp_path).stages["total"]["metrics"]["sum"] == 55


def test_stage_subset_uses_earlier_outputs_and_needs_them(tmp_path):
    with pytest.raises(PipelineError, match="needs input 'numbers' from stage 'numbers', which is not run"):
        run_pipeline(_subset(tmp_path, ["total"]))
    run_pipeline(_subset(tmp_path, ["numbers"]))
    assert _statuses(tmp_path) == {"numbers": "completed"}
    run_pipeline(_subset(tmp_path, ["total"]))
    assert _statuses(tmp_path) == {"numbers": "completed", "total": "completed"}


def _subset(tmp_path, stages):
    cfg = recipe(str(tmp_path))
    cfg.stages = stages
    return cfg


def test_tampered_output_is_redone(tmp_path):
    run_pipeline(recipe(str(tmp_path)))
    (tmp_path / "total" / "sum.json").write_text('{"sum": -1}')
    run_pipeline(recipe(str(tmp_path)))
    assert json.loads((tmp_path / "total" / "sum.json").read_text()) == {"sum": 45}


def test_unknown_stage_key_fails_before_running_naming_it(tmp_path):
    cfg = recipe(str(tmp_path), train={"stepz": 3})
    with pytest.raises(PipelineError, match=r"stage\.train\.stepz") as e:
        run_pipeline(cfg)
    assert "known keys of TrainConfig: steps, delay_s" in str(e.value)
    assert not (tmp_path / "manifest.json").exists()  # nothing ran, nothing written


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PipelineError, match=f"cannot write run directory {blocker}/run"):
        run_pipeline(recipe(str(blocker / "run")))


def test_explicit_path_input(tmp_path):
    data = tmp_path / "given.jsonl"
    data.write_text('{"value": 7}\n{"value": 5}\n')
    cfg = recipe(str(tmp_path / "run"), total={"inputs": {"numbers": str(data)}})
    cfg.stages = ["total"]
    run_pipeline(cfg)
    assert Manifest(tmp_path / "run").stages["total"]["metrics"]["sum"] == 12


def _start(run_dir, overrides):
    return subprocess.Popen([sys.executable, "-m", "tests.pipeline.stages", str(run_dir), json.dumps(overrides)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)



def test_sigkill_mid_write_leaves_no_corrupt_artifact_and_rerun_completes(tmp_path):
    proc = _start(tmp_path, {"numbers": {"n": 200, "delay_s": 0.02}})
    stage_dir = tmp_path / "numbers"
    wait_for(lambda: stage_dir.exists() and any(p.name.endswith(".tmp") for p in stage_dir.iterdir()))
    time.sleep(0.3)  # the temp file is half written now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (stage_dir / "numbers.jsonl").exists()
    assert _statuses(tmp_path) == {"numbers": "running"}
    run_pipeline(recipe(str(tmp_path), numbers={"n": 200}))
    assert len(read_jsonl(stage_dir / "numbers.jsonl")) == 200
    assert set(_statuses(tmp_path).values()) == {"completed"}


def test_killed_training_stage_resumes_from_last_checkpoint(tmp_path):
    over = {"train": {"steps": 12, "delay_s": 0.1}}
    proc = _start(tmp_path, over)
    ckpts = tmp_path / "train" / "checkpoints"
    wait_for(lambda: (ckpts / "checkpoint-3" / "trainer_state.json").exists())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_pipeline(recipe(str(tmp_path), **over))  # same config: the stage folder is kept
    final = json.loads((tmp_path / "train" / "final.json").read_text())
    assert final["resumed_from"] >= 3 and final["steps"] == 12


def test_cli_reports_unknown_key_and_exits_nonzero(capsys):
    assert main(["+nonsense_key=1"]) == 2
    assert "nonsense_key" in capsys.readouterr().err


@pytest.mark.parametrize("recipe_file", sorted(p.stem for p in (REPO / "recipes" / "pipeline").glob("*.yaml")))
def test_every_pipeline_recipe_composes_and_validates(recipe_file, tmp_path):
    overrides = [f"pipeline={recipe_file}"]
    if recipe_file == "h100_dpo_sweep":  # reads a finished run: give it the two paths it names
        for stage in ("sft_hard", "reward"):
            (tmp_path / stage / "model").mkdir(parents=True)
            (tmp_path / stage / "model" / "weights").write_text("x")
        overrides.append(f"vars.sweep_from={tmp_path}")
    cfg = compose(overrides)
    planned = plan(cfg)  # imports every runner and checks every stage block against its schema
    assert [p.name for p in planned] == list(cfg.pipeline.order)


def test_report_has_table_and_embedded_plots(tmp_path):
    run_pipeline(recipe(str(tmp_path)))
    md = (tmp_path / "report.md").read_text()
    assert "| total | completed |" in md and "sum=45" in md
    assert (tmp_path / "report_assets" / "time_per_stage.png").stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and "<td>train</td>" in page
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stages"]["total"]["status"] == "completed" and report["stages"]["total"]["metrics"]["sum"] == 45
    assert report["card"]["commit"] and report["card"]["versions"]["torch"] != "not installed"
    assert md.count("Ran: ") == 1 and report["card"]["date_utc"] in md


def test_eval_table_shows_intervals_and_paired_change():
    from alignment.report import eval_table

    metrics = {"a/s/acc": 0.25, "a/s/acc_lo": 0.2, "a/s/acc_hi": 0.31, "a/s/format": 0.9, "a/s/n": 200,
               "b/s/acc": 0.4, "b/s/acc_lo": 0.33, "b/s/acc_hi": 0.47, "b/s/format": 1.0, "b/s/n": 200,
               "b/s/delta": 0.15, "b/s/p_mcnemar": 0.0004, "b/s/sample_s": 3.0, "b/s/pass@4_sampled": 0.55,
               "a/first/acc": 0.1, "b/first/acc": 0.2, "b/first/delta": 0.1, "b/first/p_mcnemar": 0.0123,
               "b/s/format_delta": 0.1, "b/s/format_p_mcnemar": 0.02, "a/s/wrong_step_share": 0.08, "b/s/wrong_step_share": 0.125}
    rows = eval_table(metrics, ["a", "b", "eval"])
    # sets in the order the recipe lists them (s before first), checkpoints in pipeline order
    assert rows[2] == "| s | a | 0.250 [0.200, 0.310] | - | 0.900 | 0.080 | 200 | - |"
    assert rows[3] == "| s | b | 0.400 [0.330, 0.470] | pass@4 0.550 | 1.000 (+0.100, p=0.02) | 0.125 | 200 | +0.150 (p<0.001) |"
    assert rows[5] == "| first | b | 0.200 | - | - | - | - | +0.100 (p=0.0123) |"


def test_final_vs_first_table():
    from alignment.report import final_vs_first_table

    metrics = {"base/s/acc": 0.04, "sft/s/acc": 0.05, "dpo/s/acc": 0.017, "dpo/s/delta": -0.02,
               "dpo/s/vs_first_delta": -0.023, "dpo/s/vs_first_p_mcnemar": 0.09,
               "base/h/pass@1": 0.037, "dpo/h/pass@1": 0.037, "dpo/h/vs_first_delta": 0.0, "dpo/h/vs_first_p_mcnemar": 1.0}
    rows = final_vs_first_table(metrics, ["base", "sft", "dpo"])
    assert rows[0] == "| set | base | dpo | change (McNemar, dpo vs base) |"
    assert rows[2:] == ["| s | 0.040 | 0.017 | -0.023 (p=0.09) |", "| h | 0.037 | 0.037 | +0.000 (p=1) |"]
    assert final_vs_first_table(metrics, ["base", "dpo"]) == []  # two checkpoints: the main table already says it


def test_eval_table_against_a_baseline_names_it():
    from alignment.report import eval_table

    metrics = {"sft_hard/s/acc": 0.4, "lr_a/s/acc": 0.3, "lr_a/s/delta": -0.1, "lr_a/s/p_mcnemar": 0.01}
    rows = eval_table(metrics, ["sft_hard", "lr_a"], baseline="sft_hard")
    assert rows[0].endswith("| change vs `sft_hard` (McNemar) |")
    assert rows[3] == "| s | lr_a | 0.300 | - | - | - | - | -0.100 (p=0.01) |"


def test_null_input_drops_a_default_input():
    from omegaconf import OmegaConf

    from alignment.pipeline import build_stage_config

    block = OmegaConf.create({"_target_": "alignment.tasks.evaluate.run", "sets": [{"source": "templates", "split": "train_heldout"}],
                              "inputs": {"sft_broad": None, "sft_hard": "/x/sft_hard/model"}})
    _, _, inputs, _, identity = build_stage_config("eval", block)
    assert inputs == {"sft_hard": "/x/sft_hard/model"} and identity["inputs"] == inputs


def test_stage_under_accelerate_launch(tmp_path, capsys):
    cfg = recipe(str(tmp_path), total={"accelerate": "cpu_single"})
    run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "launch: " in out and "accelerate.commands.launch" in out and "alignment.launch" in out
    entry = Manifest(tmp_path).stages["total"]
    assert entry["status"] == "completed" and entry["metrics"] == {"sum": 45, "rows": 10}


def test_unknown_accelerate_config_is_named(tmp_path):
    with pytest.raises(PipelineError, match=r"stage\.total\.accelerate: no accelerate config 'fsdp9'"):
        run_pipeline(recipe(str(tmp_path), total={"accelerate": "fsdp9"}))
