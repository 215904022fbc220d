"""Loss parity and throughput of one SFT stage on 1 process vs N processes, in one run, one table.

Both runs go through the real pipeline (``python -m alignment.pipeline``) on the same policy, the
same seed and the same global batch: the single run uses ``per_device_train_batch_size=B`` and
the multi-process run ``B / N`` per rank (``stage.sft_broad.accelerate=<config>``). The logged
training loss of every step (rank-averaged by the Trainer) is compared step by step, and
throughput is the Trainer's ``num_input_tokens_seen`` (summed over ranks) over its
``train_runtime`` (training loop only: no process start, data build or model load).

Run on CPU (2 gloo ranks, one torch thread each; any machine)::

    python bench/multiproc.py                              # policy: runs/tiny_cpu/base/model
    python bench/multiproc.py --steps 20 --global-batch 8 --weighting token

Run on 2 GPUs (the single run has no accelerate config: plain one-GPU Trainer)::

    python bench/multiproc.py --device cuda --single none --multi ddp --nproc 2 \\
        --policy runs/h100_small/base/model --max-length 2048 --global-batch 16
    python bench/multiproc.py --device cuda --single none --multi fsdp2 --nproc 2 ...

Why the losses are close but not bit-identical: each rank's micro-batch loss is a mean over its
own rows and the Trainer averages the rank means, while one process takes one mean over all rows.
With ``--weighting sample`` (the recipe default) and packing, ranks hold different sample counts,
so the mean of means differs from the one mean; N ranks of B/N rows then equal ONE process with
B/N rows x N gradient-accumulation steps (``--single-mode accum``), which averages micro-batch
means the same way. ``--weighting token`` normalizes by the global token count (gathered across
ranks), so it matches ``--single-mode batch``. Both leave the MoE balance loss (a non-linear
function of each micro-batch's routing statistics) and float summation order as the residual.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sft(run_dir: Path, args, accelerate: str | None, per_device: int, accum: int = 1) -> dict:
    """One pipeline run of ``sft_broad``; returns its Trainer log history and wall time."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a kept run dir would be skipped as already completed
    cmd = [
        sys.executable, "-m", "alignment.pipeline", f"run_name={run_dir.name}", f"run_dir={run_dir}",
        "stages=[sft_broad]", f"device={args.device}", f"seed={args.seed}",
        f"stage.sft_broad.inputs.policy={args.policy}",
        f"stage.sft_broad.max_steps={args.steps}", "stage.sft_broad.logging_steps=1",
        f"stage.sft_broad.per_device_train_batch_size={per_device}",
        f"stage.sft_broad.gradient_accumulation_steps={accum}",
        f"stage.sft_broad.max_length={args.max_length}",
        f"stage.sft_broad.loss_weighting={args.weighting}",
        f"stage.sft_broad.save_steps={args.steps + 1}",
        "+stage.sft_broad.sft_args.include_num_input_tokens_seen=true",
    ]
    if accelerate:
        cmd.append(f"stage.sft_broad.accelerate={accelerate}")
        if args.nproc and accelerate == args.multi:
            cmd.append(f"stage.sft_broad.num_processes={args.nproc}")
    cmd += args.set
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"run failed (exit {proc.returncode}): {' '.join(cmd)}")
    history = json.loads((run_dir / "sft_broad" / "train_log.json").read_text())
    return {"history": history, "wall_s": wall}


def summarize(run: dict) -> dict:
    hist = run["history"]
    logged = [h for h in hist if "loss" in h]
    final = next(h for h in hist if "train_loss" in h)
    # Every step's log line carries the tokens seen so far and the loop's elapsed time; the
    # steady rate leaves out step 1 (first-call allocations, DDP's first bucket rebuild).
    first, last = logged[0], logged[-1]
    steady = (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["train_runtime"] - first["train_runtime"])
    return {"losses": {h["step"]: h["loss"] for h in logged}, "runtime_s": final["train_runtime"],
            "tokens": final["num_input_tokens_seen"], "tokens_per_s": final["num_input_tokens_seen"] / final["train_runtime"],
            "steady_tokens_per_s": steady, "wall_s": run["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default=str(REPO / "runs/tiny_cpu/base/model"),
                    help="a model dir (save_pretrained + tokenizer), e.g. a base stage's output")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--single", default="cpu_single", help="accelerate config of the 1-process run ('none': in-process)")
    ap.add_argument("--multi", default="cpu_ddp", help="accelerate config of the N-process run")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--global-batch", type=int, default=4, help="rows per optimizer step, all ranks together")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--weighting", default="sample", choices=["sample", "token"])
    ap.add_argument("--single-mode", default="batch", choices=["batch", "accum"],
                    help="1-process run: the whole global batch per micro-batch, or B/N rows x N accumulation steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (CPU)")
    ap.add_argument("--tol", type=float, default=0.02, help="max relative loss difference per step for PASS")
    ap.add_argument("--work-dir", default="/tmp/yialign_multiproc")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides for both runs")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    if args.global_batch % args.nproc:
        raise SystemExit(f"--global-batch {args.global_batch} is not a multiple of --nproc {args.nproc}")
    if not (Path(args.policy) / "config.json").is_file():
        raise SystemExit(f"{args.policy}: no model there; build one with `yialign stages=[base]` "
                         "(runs/tiny_cpu/base/model) or pass --policy")
    work = Path(args.work_dir)
    single = None if args.single == "none" else args.single
    print(f"1 process ({args.single}) vs {args.nproc} ({args.multi}) on {args.device}: "
          f"global batch {args.global_batch} (1 process: {args.single_mode}), {args.steps} steps, weighting={args.weighting}", flush=True)
    per_rank = args.global_batch // args.nproc
    if args.single_mode == "batch":
        one = summarize(run_sft(work / "p1", args, single, args.global_batch))
    else:
        one = summarize(run_sft(work / "p1", args, single, per_rank, accum=args.nproc))
    many = summarize(run_sft(work / f"p{args.nproc}", args, args.multi, per_rank))

    print(f"\n{'step':>4}  {'loss 1p':>9}  {f'loss {args.nproc}p':>9}  {'abs diff':>9}  {'rel diff':>9}")
    rel = []
    for step in sorted(one["losses"]):
        a, b = one["losses"][step], many["losses"].get(step, float("nan"))
        rel.append(abs(a - b) / abs(a))
        print(f"{step:>4}  {a:>9.4f}  {b:>9.4f}  {abs(a - b):>9.2e}  {rel[-1]:>9.2e}")
    worst = max(rel)
    print(f"\n{'':<12}{'loop s':>8}  {'tokens':>8}  {'tokens/s':>9}  {'steady tok/s':>12}  {'wall s':>7}")
    for name, r in (("1 proc", one), (f"{args.nproc} proc", many)):
        print(f"{name:<12}{r['runtime_s']:>8.2f}  {r['tokens']:>8.0f}  {r['tokens_per_s']:>9.1f}  "
              f"{r['steady_tokens_per_s']:>12.1f}  {r['wall_s']:>7.1f}")
    same_tokens = one["tokens"] == many["tokens"]
    print(f"\nmax relative loss difference {worst:.2e} (tol {args.tol}): {'PASS' if worst <= args.tol else 'FAIL'}; "
          f"same tokens seen: {same_tokens}; steady speed-up {many['steady_tokens_per_s'] / one['steady_tokens_per_s']:.2f}x "
          f"({args.device}{', OMP_NUM_THREADS=' + os.environ.get('OMP_NUM_THREADS', str(args.threads)) if args.device == 'cpu' else ''})")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "single": one, "multi": many, "max_rel_diff": worst}, indent=1))
    if worst > args.tol or not same_tokens:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
