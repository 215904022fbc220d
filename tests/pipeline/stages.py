"""Small stage runners for the pipeline tests (the code under test is the pipeline, not these)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from omegaconf import OmegaConf

from alignment.artifacts import atomic_write_json, atomic_write_jsonl, read_jsonl
from alignment.stage_contract import StageContext, StageResult


@dataclass
class NumbersConfig:
    n: int = 10
    offset: int = 0
    delay_s: float = 0.0  # pause per row, so a test can kill the stage mid-write
    gate: str = ""  # a file to wait for (up to 120 s) before writing, so a test controls when the stage ends


def write_numbers(cfg: NumbersConfig, ctx: StageContext) -> StageResult:
    if cfg.gate:
        from pathlib import Path

        end = time.time() + 120
        while not Path(cfg.gate).exists() and time.time() < end:
            time.sleep(0.05)

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


@dataclass
class PickyConfig:
    fail: bool = True


def write_then_fail(cfg: PickyConfig, ctx: StageContext) -> StageResult:
    """Writes a file, then (with ``fail``) stops on a user error: the pipeline must undo the file."""
    from alignment.errors import DataError

    atomic_write_json(ctx.stage_dir / "partial.json", {"half": True})
    if cfg.fail:
        raise DataError(f"{ctx.stage_dir / 'input.jsonl'}:3: bad row (wrong_type): for the test")
    return StageResult(outputs={"partial": "partial.json"}, metrics={})


def test_recipe(run_dir: str, root: dict | None = None, **stage_overrides) -> "OmegaConf":
    """A three-stage recipe over the runners above, as the pipeline would compose it.

    ``root`` sets top-level keys (``keep_checkpoints``, ``lock_timeout``, ...)."""
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
        cfg["stage"].setdefault(name, {}).update(over)
    cfg.update(root or {})
    return OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)


if __name__ == "__main__":
    # driver for the kill and lock tests: python -m tests.pipeline.stages RUN_DIR JSON_OVERRIDES [JSON_ROOT]
    # (exit status and error line as yialign's: 2 and one line for a user error)
    from alignment.errors import UserError
    from alignment.pipeline import run_pipeline

    try:
        run_pipeline(test_recipe(sys.argv[1], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None,
                                 **json.loads(sys.argv[2])))
    except UserError as e:
        print(f"yialign: error: {e}", file=sys.stderr)
        sys.exit(2)
