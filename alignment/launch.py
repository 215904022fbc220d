"""Run one stage of a run directory in this process: the target of ``accelerate launch``.

The pipeline starts a training stage whose recipe block names an accelerate config
(``stage.sft_broad.accelerate=fsdp2``) as

    accelerate launch --config_file recipes/accelerate/fsdp2.yaml -m alignment.launch runs/<name> sft_broad

Every rank rebuilds the stage from ``runs/<name>/config.yaml`` (the recipe the pipeline
composed) and the manifest (its inputs), runs it, and rank 0 writes the StageResult to
``<stage dir>/.result.json`` for the pipeline to record (or ``{"user_error": ...}`` when the stage
stopped on a bad config, input or data file). The manifest is only ever written by the
pipeline process, which holds the run directory's lock meanwhile.

Multi-process CPU (``recipes/accelerate/cpu_ddp.yaml``, ``distributed_type: MULTI_CPU``):
``accelerate launch`` starts MULTI_CPU ranks only through ``mpirun``; without an MPI hostfile it
starts a single process. That process notices (no ``WORLD_SIZE`` in its environment) and starts
the ranks itself with ``torch.distributed.run`` (gloo), so the same recipe switch works on a
laptop: ``yialign stages=[sft_broad] stage.sft_broad.accelerate=cpu_ddp``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

import alignment  # noqa: F401  registers the model with the Auto classes
from alignment.artifacts import Manifest, atomic_write_json, row_limit
from alignment.errors import UserError
from alignment.pipeline import RESULT_FILE, RootConfig, _resolve_inputs, plan, resolve_device
from alignment.stage_contract import StageContext


def main(argv: list[str] | None = None) -> int:
    run_dir, name = (argv if argv is not None else sys.argv[1:])[:2]
    run_dir = Path(run_dir)
    cfg = OmegaConf.merge(OmegaConf.structured(RootConfig), OmegaConf.load(run_dir / "config.yaml"))
    planned = {p.name: p for p in plan(cfg)}
    p = planned[name]
    nproc = cpu_ranks_to_spawn(p.launch)
    if nproc:
        return spawn_cpu_ranks(run_dir, name, nproc)
    inputs, _ = _resolve_inputs(p, Manifest(run_dir), list(planned))
    device = resolve_device(cfg.device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        # Each rank owns one card: runners call model.to(ctx.device), and a bare "cuda" would put
        # every rank's copy on card 0 before the Trainer moves it (an OOM risk at real sizes).
        import torch

        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    ctx = StageContext(name=name, run_dir=run_dir, stage_dir=run_dir / name, inputs=inputs, root=cfg,
                       device=device, seed=int(cfg.seed))
    try:
        with row_limit(int(cfg.max_row_bytes)):
            result = p.fn(p.cfg, ctx)
    except UserError as e:  # the pipeline reports it as one line and puts the stage back as it was
        if ctx.is_main_process:
            atomic_write_json(ctx.stage_dir / RESULT_FILE, {"user_error": str(e)})
        print(f"yialign: error: {e}", file=sys.stderr)
        return 2
    if ctx.is_main_process:
        atomic_write_json(ctx.stage_dir / RESULT_FILE, dataclasses.asdict(result))
    return 0


def cpu_ranks_to_spawn(launch: dict) -> int:
    """How many CPU ranks this (single, rank-less) process must start itself; 0 when none.

    Non-zero only for a MULTI_CPU accelerate config asking for more than one process when no
    launcher has set ``WORLD_SIZE`` (accelerate's simple launcher without mpirun).
    """
    if "config_file" not in launch or "WORLD_SIZE" in os.environ:
        return 0
    acc = OmegaConf.load(launch["config_file"])
    if acc.get("distributed_type") != "MULTI_CPU":
        return 0
    n = int(launch.get("num_processes") or acc.get("num_processes", 1))
    return n if n > 1 else 0


def spawn_cpu_ranks(run_dir: Path, name: str, nproc: int) -> int:
    """Start ``nproc`` gloo ranks of this module with ``torch.distributed.run``; their exit status."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true")
    # one intra-op thread per rank unless the caller chose: ranks x threads must fit the cores
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "alignment.launch", str(run_dir), name]
    print("  ranks: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
