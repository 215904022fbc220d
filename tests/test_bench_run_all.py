"""bench/run_all.py (``make bench``): lists every bench/*.py, runs the CPU ones, names the GPU ones,
and exits 1 when a benchmark fails. The real benchmarks take minutes: here they are stand-ins.

Run: python -m pytest -q tests/test_bench_run_all.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_all(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_benchmark_is_listed(run_all, capsys):
    assert run_all.main(["--list"]) == 0  # raises when BENCHES and bench/*.py disagree
    listed = capsys.readouterr().out
    assert all(p.stem in listed for p in (REPO / "bench").glob("*.py") if p.name != "run_all.py")
    gpu = {b.name for b in run_all.BENCHES if b.gpu}
    assert gpu == {"moe", "linear_ce", "attention"}  # everything else runs on a CPU box


def test_runs_cpu_ones_names_gpu_ones_and_fails_on_a_failure(run_all, tmp_path, monkeypatch, capfd):
    (tmp_path / "good.py").write_text("import sys; print('good ran', sys.argv[1:])\n")
    (tmp_path / "bad.py").write_text("print('bad ran'); raise SystemExit(3)\n")
    (tmp_path / "big.py").write_text("raise SystemExit('must not run without a GPU')\n")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    monkeypatch.setattr(run_all, "BENCHES", [
        run_all.Bench("good", "a passing one", ["--small"]),
        run_all.Bench("bad", "a failing one"),
        run_all.Bench("big", "a GPU one", gpu=True),
    ])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert run_all.main([]) == 1
    out = capfd.readouterr().out  # capfd: the benchmarks are subprocesses writing to fd 1
    assert "good ran ['--small']" in out and "bad ran" in out
    assert "bench/big.py: needs a CUDA GPU" in out and "must not run" not in out
    assert "| good | ok |" in out and "| bad | FAILED (exit 3) |" in out
    assert "1 of 2 run ok; FAILED: bad; need a GPU, not run here: big" in out
    assert run_all.main(["--only", "good"]) == 0


def test_results_keep_each_output_under_its_card(run_all, tmp_path, monkeypatch, capfd):
    (tmp_path / "good.py").write_text("print('| variant | tokens/s |'); print('| ours | 123 |')\n")
    (tmp_path / "bad.py").write_text("print('half a table'); raise SystemExit(3)\n")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    monkeypatch.setattr(run_all, "BENCHES", [run_all.Bench("good", "a passing one"), run_all.Bench("bad", "a failing one")])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert run_all.main(["--results", str(tmp_path / "results")]) == 1
    assert "| ours | 123 |" in capfd.readouterr().out  # still printed as it runs
    (run_dir,) = list((tmp_path / "results").glob("*/*"))
    assert run_dir.parent.name.startswith("cpu-")  # one folder per machine, then per date and commit
    good, bad = (run_dir / "good.md").read_text(), (run_dir / "bad.md").read_text()
    assert good.startswith("# bench/good.py: a passing one") and "| ours | 123 |" in good
    assert "commit `" in good and "torch " in good and "(ok)" in good
    assert "half a table" in bad and "FAILED (exit 3)" in bad
