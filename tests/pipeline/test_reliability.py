"""Reliability (issue 19): every bad input ends with exit status 2, one line naming the file, key or
process, and the run folder exactly as it was; one writer per run directory; stage fingerprints from
content; files readable as the umask allows; finished stages without trainer checkpoints.

The table runs the real CLI entry point (``alignment.pipeline.main``) in this process on the
``tiny_cpu`` recipe, against a run folder whose ``base`` stage completed (a 1-step base, built once).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from alignment.artifacts import LOCK_FILE, LOCK_OWNER_FILE, Manifest, atomic_write_text, iter_jsonl
from alignment.errors import BadRowError, DataError, RunLockedError
from alignment.pipeline import main, run_pipeline
from tests.pipeline.stages import test_recipe as recipe
from tests.pipeline.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

TINY_BASE = ["stages=[base]", "stage.base.max_steps=1", "stage.base.tokenizer_max_chars_per_source=3000",
             "stage.base.max_chars_per_source=3000", "stage.base.eval_blocks=1", "stage.base.seq_len=32",
             "stage.base.per_device_train_batch_size=2", "stage.base.save_steps=1"]
SFT = ["stages=[sft_broad]", "stage.sft_broad.max_steps=1", "data.sft_broad.target_count=8", "data.decontam.enabled=false"]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too) -> a hash of its bytes; the lock file itself excepted."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == LOCK_FILE:
            continue
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A run folder where a 1-step ``base`` completed (its model is the policy the SFT cases load)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    assert main([f"run_dir={run}", *TINY_BASE]) == 0
    assert Manifest(run).outputs_intact("base")
    return run


def _source(path: Path) -> list[str]:
    return [f"data.sft_broad.sources=[{{name:bad,path:'{path}'}}]", *SFT]


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _truncated_copy(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return dst


ROW = '{"prompt": "What is 2+2?", "response": "4"}\n'


@dataclass
class Case:
    id: str
    prepare: Callable[[Path, Path], list[str]]  # (run folder, scratch folder) -> CLI overrides
    expect: list[str] = field(default_factory=list)  # substrings of the error line


CASES = [
    # config: groups, types, keys, ranges
    Case("group typo model", lambda run, tmp: ["model=smal", *SFT], ["model=smal", "paper_like, small, tiny"]),
    Case("group typo sampler", lambda run, tmp: ["sampler=nope", *SFT], ["sampler=nope", "hf, native, vllm"]),
    Case("seed not an int", lambda run, tmp: ["seed=abc", *SFT], ["seed=abc", "could not be converted to Integer"]),
    Case("unknown top-level key", lambda run, tmp: ["stepz=3", *SFT], ["stepz: unknown key", "known top-level keys"]),
    Case("unknown stage key", lambda run, tmp: ["stage.sft_broad.stepz=3", *SFT],
         ["stage.sft_broad.stepz", "known keys of SFTStageConfig"]),
    Case("key behind an interpolation", lambda run, tmp: [*SFT, "stage.sft_broad.mixture.target_count=3"],
         ["stage.sft_broad.mixture is ${data.sft_broad}", "override data.sft_broad.target_count instead"]),
    Case("unknown stage", lambda run, tmp: ["stages=[sft_broad,nope]"], ["unknown stage 'nope'"]),
    Case("negative steps", lambda run, tmp: [*TINY_BASE, "stage.base.max_steps=-5"], ["stage.base.max_steps=-5", ">= 0"]),
    Case("zero batch size", lambda run, tmp: ["stage.sft_broad.per_device_train_batch_size=0", *SFT],
         ["stage.sft_broad.per_device_train_batch_size=0", "> 0"]),
    Case("negative learning rate", lambda run, tmp: ["stage.sft_broad.learning_rate=-0.001", *SFT],
         ["stage.sft_broad.learning_rate=-0.001"]),
    Case("zero target count", lambda run, tmp: [*SFT, "data.sft_broad.target_count=0"], ["mixture.target_count=0"]),
    # data rows
    Case("invalid JSON", lambda run, tmp: _source(_write(tmp / "d.jsonl", ROW + '{"prompt": \n')),
         ["d.jsonl:2", "invalid JSON"]),
    Case("missing field", lambda run, tmp: _source(_write(tmp / "d.jsonl", ROW + '{"prompt": "hi"}\n')),
         ["d.jsonl:2", "missing_messages"]),
    Case("wrong type", lambda run, tmp: _source(_write(tmp / "d.jsonl", '{"prompt": 5, "response": "x"}\n')),
         ["d.jsonl:1", "'prompt' is a int"]),
    Case("empty file", lambda run, tmp: _source(_write(tmp / "d.jsonl", "")), ["d.jsonl has no rows"]),
    Case("not UTF-8", lambda run, tmp: _source(_write(tmp / "d.jsonl", ROW.encode() + b'{"prompt": "\xff"}\n')),
         ["d.jsonl:2", "not UTF-8"]),
    Case("row over the default limit", lambda run, tmp: _source(_write(
        tmp / "d.jsonl", ROW + json.dumps({"prompt": "p", "response": "x" * 1_100_000}) + "\n")),
         ["d.jsonl:2", "bytes, over the row-size limit of 1048576", "max_row_bytes=N"]),
    Case("row over max_row_bytes", lambda run, tmp: ["max_row_bytes=40", *_source(_write(tmp / "d.jsonl", ROW * 2))],
         ["d.jsonl:1", "row-size limit of 40"]),
    Case("missing source file", lambda run, tmp: _source(tmp / "nope.jsonl"), ["nope.jsonl does not exist"]),
    Case("missing decontam file", lambda run, tmp: [*SFT, f"data.decontam.extra_paths=['{tmp / 'held.jsonl'}']"],
         ["stage.sft_broad.decontam.extra_paths[0]", "held.jsonl does not exist"]),
    # inputs and checkpoints
    Case("removed required input", lambda run, tmp: ["~stage.sft_broad.inputs.policy", *SFT],
         ["stage 'sft_broad' needs input 'policy'", "stage.sft_broad.inputs.policy"]),
    Case("empty checkpoint folder", lambda run, tmp: [f"stage.sft_broad.inputs.policy={(tmp / 'empty').mkdir() or tmp / 'empty'}", *SFT],
         ["stage.sft_broad.inputs.policy", "is an empty folder"]),
    Case("truncated weights", lambda run, tmp: [
        f"stage.sft_broad.inputs.policy={_truncated_copy(run / 'base' / 'model', tmp / 'cut')}", *SFT],
         ["stage.sft_broad.inputs.policy", "model.safetensors is truncated"]),
    Case("upstream output changed", lambda run, tmp: [_write(run / "base" / "model" / "config.json", "{}") and "seed=0", *SFT],
         ["input 'policy' from stage 'base'", "output 'model'", "changed since it completed"]),
    # the run directory
    Case("corrupt manifest", lambda run, tmp: [_write(run / "manifest.json", '{"stages": {"base": ') and "seed=0", *SFT],
         ["manifest.json: corrupt manifest", "move it aside"]),
    Case("empty-object manifest", lambda run, tmp: [_write(run / "manifest.json", "{}") and "seed=0", *SFT],
         ["manifest.json: corrupt manifest (no 'stages' object)"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_the_run_unchanged(case, base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    args = case.prepare(run, tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    rc = main([f"run_dir={run}", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("yialign")]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("yialign: error: ") and err.rstrip().endswith(lines[0]), err
    for text in case.expect:
        assert text in lines[0], lines[0]
    assert snapshot(run) == before  # nothing written, nothing partial left, config.yaml as it was


def test_bad_inputs_on_a_new_run_dir_create_nothing(tmp_path, capsys):
    run = tmp_path / "new"
    assert main([f"run_dir={run}", "model=smal", *SFT]) == 2
    assert main([f"run_dir={run}", *TINY_BASE, "stage.base.max_steps=-5"]) == 2
    assert main([f"run_dir={run}", *_source(tmp_path / "nope.jsonl")]) == 2
    assert not run.exists()


def test_unwritable_run_dir_exits_2(tmp_path, capsys):
    blocker = _write(tmp_path / "file", "x")
    assert main([f"run_dir={blocker / 'run'}", *SFT]) == 2
    assert f"cannot write run directory {blocker}/run" in capsys.readouterr().err


def test_locked_run_dir_names_the_holder_and_is_left_alone(base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom alignment.artifacts import run_lock\n"
                               "with run_lock(sys.argv[1], command='yialign run_name=k1'):\n    time.sleep(60)", str(run)],
                              cwd=REPO)
    try:
        wait_for(lambda: (run / LOCK_OWNER_FILE).exists(), timeout=60.0)
        before = snapshot(run)
        assert main([f"run_dir={run}", *SFT]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"is in use by another yialign process (pid {holder.pid}" in err and "yialign run_name=k1" in err
        assert "lock_timeout" in err
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- yialign-reward inspect


@pytest.mark.parametrize("rows,expect", [
    ('{"prompt": 5, "response": "x"}\n', "c.jsonl:1: key 'prompt' must be a string"),
    ('{"prompt": "p", "response": "' + "x" * 2_000_000 + '"}\n', "c.jsonl:1: bad row (too_large)"),
    (b'{"prompt": "p", "response": "\xff"}\n', "c.jsonl:1: bad row (bad_encoding)"),
    ('{"prompt": "p", "response": "a", "problem": 3}\n', "c.jsonl:1: key 'problem' must be an object"),
], ids=["number prompt", "huge row", "not UTF-8", "bad problem"])
def test_reward_inspect_bad_candidates_exit_2(base_run, tmp_path, capsys, rows, expect):
    from reward.cli import main as reward_main

    cands = _write(tmp_path / "c.jsonl", rows)
    out = tmp_path / "out"
    assert reward_main(["inspect", "--model", str(base_run / "base" / "model"), "--candidates", str(cands),
                        "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("yialign-reward: error: ") and expect in err[0], err
    assert not out.exists()


def test_reward_inspect_bad_model_and_sizes_exit_2(tmp_path, capsys):
    from reward.cli import main as reward_main

    cands = _write(tmp_path / "c.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "empty").mkdir()
    assert reward_main(["inspect", "--model", str(tmp_path / "empty"), "--candidates", str(cands)]) == 2
    assert "is an empty folder" in capsys.readouterr().err
    assert reward_main(["inspect", "--model", str(tmp_path / "empty"), "--candidates", str(cands), "--batch-size", "0"]) == 2
    assert "--batch-size=0: must be > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- content fingerprints


def test_rerun_of_base_with_the_same_model_keeps_the_same_output_hashes(base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = Manifest(run).entry("base")
    assert main([f"run_dir={run}", *TINY_BASE, "force=[base]"]) == 0
    after = Manifest(run).entry("base")
    assert after["finished"] != before["finished"]  # it did run again
    assert after["output_hashes"] == before["output_hashes"]  # ... and the next stage's input hash is unchanged
    published = json.loads((run / "base" / "metrics.json").read_text())
    assert "wall_s" in after["metrics"] and "wall_s" not in published and "build_s" not in published


# --------------------------------------------------------------------------- two processes, one run directory


def _start(run_dir: Path, overrides: dict, root: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.pipeline.stages", str(run_dir), json.dumps(overrides),
                             json.dumps(root or {})], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



def _intact(run_dir: Path) -> dict[str, str]:
    m = Manifest(run_dir)
    for name in m.stages:
        assert m.outputs_intact(name), name  # every recorded hash matches its file
    return {k: v["status"] for k, v in m.stages.items()}


def test_second_process_on_a_run_refuses_and_the_manifest_stays_whole(tmp_path):
    gate = tmp_path.parent / f"{tmp_path.name}.go"
    first = _start(tmp_path, {"numbers": {"gate": str(gate)}})  # holds the run until the gate opens
    wait_for(lambda: (tmp_path / LOCK_OWNER_FILE).exists())
    second = _start(tmp_path, {"numbers": {"gate": str(gate)}, "total": {"scale": 3}})  # another stage's change
    out2, err2 = second.communicate(timeout=120)
    gate.touch()
    _, err1 = first.communicate(timeout=120)
    assert second.returncode == 2, err2
    assert f"pid {first.pid}" in err2 and "in use by another yialign process" in err2
    assert len(err2.strip().splitlines()) == 1
    assert first.returncode == 0, err1
    assert _intact(tmp_path) == {"numbers": "completed", "total": "completed", "train": "completed"}
    assert json.loads((tmp_path / "total" / "sum.json").read_text()) == {"sum": 45}  # the first one's config
    assert "scale: 3" not in (tmp_path / "config.yaml").read_text()


def test_second_process_with_lock_timeout_waits_then_finds_everything_done(tmp_path):
    gate = tmp_path.parent / f"{tmp_path.name}.go"
    over = {"numbers": {"gate": str(gate)}}
    first = _start(tmp_path, over)
    wait_for(lambda: (tmp_path / LOCK_OWNER_FILE).exists())
    second = _start(tmp_path, over, {"lock_timeout": 120})
    waiting = second.stderr.readline()  # its first words: who holds the run, and that it waits
    assert f"in use by another yialign process (pid {first.pid}" in waiting and "waiting up to 120 s" in waiting
    assert second.poll() is None
    gate.touch()
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert out1.count("running") == 3 and out2.count("cached") == 3  # it ran after the first, not alongside it
    assert _intact(tmp_path) == {"numbers": "completed", "total": "completed", "train": "completed"}


def test_lock_of_a_killed_process_is_free_at_once(tmp_path):
    over = {"train": {"steps": 30, "delay_s": 0.1}}
    first = _start(tmp_path, over)
    wait_for(lambda: (tmp_path / "train" / "checkpoints" / "checkpoint-2").exists())
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (tmp_path / LOCK_OWNER_FILE).exists()  # stale owner note: the OS lock itself died with the process
    run_pipeline(recipe(str(tmp_path), **over))  # no refusal, and the killed stage resumes
    assert json.loads((tmp_path / "train" / "final.json").read_text())["resumed_from"] >= 2
    assert not (tmp_path / LOCK_OWNER_FILE).exists()


def test_run_lock_refuses_in_process(tmp_path):
    from alignment.artifacts import run_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom alignment.artifacts import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    time.sleep(60)", str(tmp_path)], cwd=REPO)
    try:
        wait_for(lambda: (tmp_path / LOCK_OWNER_FILE).exists())
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with run_lock(tmp_path):
                pass
        t0 = time.time()
        with pytest.raises(RunLockedError, match=r"waited 0\.5 s"):
            with run_lock(tmp_path, timeout=0.5):
                pass
        assert time.time() - t0 >= 0.5
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # free again
        pass


def test_manifest_updates_never_drop_another_stage(tmp_path):
    m1, m2 = Manifest(tmp_path), Manifest(tmp_path)  # two views, as two processes would hold
    m1.update("a", status="completed")
    m2.update("b", status="running")
    m1.update("a", metrics={"x": 1})
    assert {k: v["status"] for k, v in Manifest(tmp_path).stages.items()} == {"a": "completed", "b": "running"}
    assert Manifest(tmp_path).entry("a")["metrics"] == {"x": 1}


# --------------------------------------------------------------------------- rollback, checkpoints, modes


def _with_picky(cfg, **picky):
    cfg.pipeline.order = ["numbers", "total", "train", "picky"]
    cfg.stage["picky"] = {"_target_": "tests.pipeline.stages.write_then_fail", "inputs": {"data": "total"}, **picky}
    return cfg


def test_user_error_in_a_new_stage_leaves_no_folder_and_no_entry(tmp_path):
    with pytest.raises(DataError, match="input.jsonl:3"):
        run_pipeline(_with_picky(recipe(str(tmp_path))))
    assert not (tmp_path / "picky").exists()
    assert _intact(tmp_path) == {"numbers": "completed", "total": "completed", "train": "completed"}


def test_user_error_in_a_rerun_stage_puts_the_old_one_back(tmp_path):
    run_pipeline(_with_picky(recipe(str(tmp_path)), fail=False))
    before = snapshot(tmp_path)
    with pytest.raises(DataError):
        run_pipeline(_with_picky(recipe(str(tmp_path)), fail=True))  # changed config: a fresh attempt
    assert snapshot(tmp_path) == before  # old folder, manifest entry and config.yaml all back
    assert not list(tmp_path.glob(".picky.prev-*"))


def test_crash_is_recorded_as_failed_and_kept_for_resume(tmp_path):
    cfg = _with_picky(recipe(str(tmp_path)))
    cfg.stage.picky._target_ = "tests.pipeline.test_reliability.crashing_stage"
    with pytest.raises(ZeroDivisionError):
        run_pipeline(cfg)
    assert Manifest(tmp_path).entry("picky")["status"] == "failed"
    assert (tmp_path / "picky" / "partial.json").exists()


def crashing_stage(cfg: "PickyConfig", ctx):  # noqa: F821  a bug, not a user error
    from alignment.artifacts import atomic_write_json

    atomic_write_json(ctx.stage_dir / "partial.json", {})
    return 1 / 0


crashing_stage.__annotations__["cfg"] = __import__("tests.pipeline.stages", fromlist=["PickyConfig"]).PickyConfig


def test_finished_stages_drop_checkpoints_unless_kept(tmp_path):
    run_pipeline(recipe(str(tmp_path / "a")))
    assert (tmp_path / "a" / "train" / "final.json").exists() and not (tmp_path / "a" / "train" / "checkpoints").exists()
    run_pipeline(recipe(str(tmp_path / "b"), root={"keep_checkpoints": True}))
    assert len(list((tmp_path / "b" / "train" / "checkpoints").iterdir())) == 6


def test_published_weights_follow_the_umask(base_run):
    from alignment.artifacts import _umask

    weights = base_run / "base" / "model" / "model.safetensors"  # safetensors itself writes 0600
    assert weights.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~_umask() for p in base_run.rglob("*") if p.is_file())


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run_pipeline(recipe(str(tmp_path / "run")))
        for p in ("manifest.json", "config.yaml", "numbers/numbers.jsonl", "report.md"):
            assert (tmp_path / "run" / p).stat().st_mode & 0o777 == 0o644, p
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- the one JSONL reader


def test_jsonl_reader_limit_is_exact_and_over_long_lines_are_skipped_whole(tmp_path):
    row = lambda n: json.dumps({"a": "x" * (n - 9)})  # noqa: E731  a JSON line of exactly n bytes
    assert len(row(40)) == 40
    f = _write(tmp_path / "r.jsonl", row(40) + "\n" + row(41) + "\n" + row(40))  # last line without newline
    got = list(iter_jsonl(f, max_bytes=40, bad="yield"))
    assert [w for w, _ in got] == [f"{f}:1", f"{f}:2", f"{f}:3"]
    assert isinstance(got[1][1], BadRowError) and got[1][1].kind == "too_large" and "41 bytes" in str(got[1][1])
    assert got[0][1] == got[2][1] == json.loads(row(40))
    with pytest.raises(BadRowError, match=r"r\.jsonl:2: bad row \(too_large\)"):
        list(iter_jsonl(f, max_bytes=40))
    assert len(list(iter_jsonl(f, max_bytes=0))) == 3  # 0 = no limit


def test_jsonl_reader_gzip_bom_and_encoding(tmp_path):
    gz = tmp_path / "r.jsonl.gz"
    with gzip.open(gz, "wb") as g:
        g.write(b'{"a": 1}\n\n{"a": 2}\n')
    assert [r for _, r in iter_jsonl(gz)] == [{"a": 1}, {"a": 2}]
    bom = _write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"a": 1}\n')
    assert [r for _, r in iter_jsonl(bom)] == [{"a": 1}]
    latin = _write(tmp_path / "latin.jsonl", '{"a": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(BadRowError, match=r"latin\.jsonl:1: bad row \(bad_encoding\): not UTF-8 text \(byte 0xe9"):
        list(iter_jsonl(latin))


def test_skip_bad_rows_counts_too_large_rows(tmp_path):
    from alignment.artifacts import row_limit
    from alignment.data.sources import SourceSpec, load_source

    f = _write(tmp_path / "s.jsonl", ROW + json.dumps({"prompt": "p", "response": "x" * 500}) + "\n" + ROW)
    with row_limit(200):
        loaded = load_source(SourceSpec(name="s", path=str(f), skip_bad_rows=True))
    assert len(loaded.records) == 2 and dict(loaded.bad_by_kind) == {"too_large": 1}


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_checks_and_resume_skips_a_broken_newest(tmp_path, recwarn):
    import torch
    from safetensors.torch import save_file

    from alignment.checkpoints import check_model_dir, last_good_checkpoint

    for step in (1, 2):
        ck = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (ck / "config.json").write_text("{}")
        save_file({"w": torch.zeros(64)}, str(ck / "model.safetensors"))
    assert last_good_checkpoint(tmp_path / "checkpoints").endswith("checkpoint-2")
    w = tmp_path / "checkpoints" / "checkpoint-2" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    assert last_good_checkpoint(tmp_path / "checkpoints").endswith("checkpoint-1")
    assert any("skipping checkpoint" in str(x.message) and "checkpoint-2" in str(x.message) for x in recwarn)
    ck1 = tmp_path / "checkpoints" / "checkpoint-1"
    with pytest.raises(DataError, match="has no tokenizer"):
        check_model_dir(ck1)
    check_model_dir(ck1, tokenizer=False)
    with pytest.raises(DataError, match=r"checkpoint-2: model.safetensors is truncated or corrupt"):
        check_model_dir(w.parent, tokenizer=False)
    (ck1 / "config.json").write_text("[1")
    with pytest.raises(DataError, match="is not a valid config"):
        check_model_dir(ck1, tokenizer=False)


def test_user_error_under_accelerate_is_one_line_and_undone(tmp_path):
    from alignment.pipeline import PipelineError

    bad = _write(tmp_path / "given.jsonl", '{"value": 1}\n{"value": \n')
    cfg = recipe(str(tmp_path / "run"), total={"accelerate": "cpu_single", "inputs": {"numbers": str(bad)}})
    cfg.stages = ["total"]
    with pytest.raises(PipelineError, match=r"given\.jsonl:2: bad row \(bad_json\)"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "total").exists() and not (tmp_path / "run" / "manifest.json").exists()
