"""Small stage runners for the pipeline tests (the code under test is the pipeline, not these)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from omegaconf import OmegaConf

from alignment.artifacts import atomic_write_json, atomic_write_jsonl, read_jsonl
from alignment.stage import StageContext, StageResult


@dataclass
class NumbersConfig:
    n: int = 10
    offset: int = 0
    delay_s: float = 0.0  # pause per row, so a test can kill the stage mid-write


def write_numbers(cfg: NumbersConfig, ctx: StageContext) -> StageResult:
    def rows():
        for i in range(cfg.n):
            if cfg.delay_s:
                time.sleep(cfg.delay_s)
            yield {"i": i, "value": i + cfg.offset}

    atomic_write_jsonl(ctx.stage_dir / "numbers.jsonl", rows())
    return StageResult(outputs={"data": "numbers.jsonl"}, metrics={"n": cfg.n})


@dataclass
class SumConfig:
    scale: int = 1


def sum_numbers(cfg: SumConfig, ctx: StageContext) -> StageResult:
    rows = read_jsonl(ctx.input("numbers", "data"))
    total = cfg.scale * sum(r["value"] for r in rows)
    atomic_write_json(ctx.stage_dir / "sum.json", {"sum": total})
    return StageResult(outputs={"sum": "sum.json"}, metrics={"sum": total, "rows": len(rows)})


@dataclass
class TrainConfig:
    steps: int = 6
    delay_s: float = 0.0


def checkpointed_train(cfg: TrainConfig, ctx: StageContext) -> StageResult:
    """Counts steps with an HF-Trainer-style checkpoint per step; resumes from the newest."""
    start = 0
    last = ctx.last_checkpoint()
    if last is not None:
        start = json.loads((ctx.stage_dir / "checkpoints" / last.split("/")[-1] / "trainer_state.json").read_text())["global_step"]
    for step in range(start + 1, cfg.steps + 1):
        if cfg.delay_s:
            time.sleep(cfg.delay_s)
        atomic_write_json(ctx.checkpoint_dir / f"checkpoint-{step}" / "trainer_state.json", {"global_step": step})
    atomic_write_json(ctx.stage_dir / "final.json", {"steps": cfg.steps, "resumed_from": start})
    return StageResult(outputs={"model": "final.json"}, metrics={"resumed_from": start})


def test_recipe(run_dir: str, **stage_overrides) -> "OmegaConf":
    """A three-stage recipe over the runners above, as the pipeline would compose it."""
    from alignment.pipeline import RootConfig

    here = "tests.pipeline.stages"  # not __name__: the kill tests run this module as __main__
    cfg = {
        "pipeline": {"name": "t", "order": ["numbers", "total", "train"]},
        "run_dir": run_dir,
        "device": "cpu",
        "stage": {
            "numbers": {"_target_": f"{here}.write_numbers", "n": 10},
            "total": {"_target_": f"{here}.sum_numbers", "inputs": {"numbers": "numbers"}},
            "train": {"_target_": f"{here}.checkpointed_train", "inputs": {"data": "total"}},
        },
    }
    for name, over in stage_overrides.items():
        cfg["stage"][name].update(over)
    return OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)


if __name__ == "__main__":  # driver for the kill tests: python -m tests.pipeline.stages RUN_DIR JSON_OVERRIDES
    from alignment.pipeline import run_pipeline

    run_pipeline(test_recipe(sys.argv[1], **json.loads(sys.argv[2])))
