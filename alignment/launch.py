"""Run one stage of a run directory in this process: the target of ``accelerate launch``.

The pipeline starts a training stage whose recipe block names an accelerate config
(``stage.sft_broad.accelerate=fsdp2``) as

    accelerate launch --config_file recipes/accelerate/fsdp2.yaml -m alignment.launch runs/<name> sft_broad

Every rank rebuilds the stage from ``runs/<name>/config.yaml`` (the recipe the pipeline
composed) and the manifest (its inputs), runs it, and rank 0 writes the StageResult to
``<stage dir>/.result.json`` for the pipeline to record. The manifest is only ever written
by the pipeline process.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from omegaconf import OmegaConf

RESULT_FILE = ".result.json"


def main(argv: list[str] | None = None) -> int:
    import alignment  # noqa: F401  registers the model with the Auto classes
    from alignment.artifacts import Manifest, atomic_write_json
    from alignment.pipeline import RootConfig, _resolve_inputs, plan, resolve_device
    from alignment.stage import StageContext

    run_dir, name = (argv if argv is not None else sys.argv[1:])[:2]
    run_dir = Path(run_dir)
    cfg = OmegaConf.merge(OmegaConf.structured(RootConfig), OmegaConf.load(run_dir / "config.yaml"))
    planned = {p.name: p for p in plan(cfg)}
    p = planned[name]
    inputs, _ = _resolve_inputs(p, Manifest(run_dir), list(planned))
    ctx = StageContext(name=name, run_dir=run_dir, stage_dir=run_dir / name, inputs=inputs, root=cfg,
                       device=resolve_device(cfg.device), seed=int(cfg.seed))
    result = p.fn(p.cfg, ctx)
    if ctx.is_main_process:
        atomic_write_json(ctx.stage_dir / RESULT_FILE, dataclasses.asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
