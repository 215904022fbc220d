"""``yialign-synth``: regenerate a synthetic dataset (or run an eval) from a recipe, outside the pipeline.

Run as (Hydra; recipes live in recipes/synth/):

    yialign-synth                                            # recipes/synth/dry_run.yaml: no model needed
    yialign-synth --config-name math_mcts job.inputs.policy=runs/tiny_cpu/sft_broad/model
    yialign-synth --config-name code_dfs job.workers=4 out_dir=runs/synth/code
    yialign-synth --config-name eval_checkpoint job.inputs.policy=runs/tiny_cpu/sft_hard/model
    python -m synth ...                                      # the same without the console script

A recipe has ``name``, ``out_dir``, ``device``, ``seed`` and a ``job`` block that is a stage
block: ``_target_`` (``synth.runner.run`` or ``alignment.tasks.evaluate.run``), ``inputs`` (input name ->
checkpoint folder) and the runner's fields, validated against its dataclass (an unknown key
fails naming it). Rerunning the same recipe resumes: finished problems are not redone, and
the same seed and config give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import typing
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignment.artifacts import atomic_write_json
from alignment.paths import RECIPES_DIR
from alignment.stage_contract import InputArtifact, StageContext


def _runner(target: str):
    module, _, attr = target.rpartition(".")
    fn = getattr(importlib.import_module(module), attr)
    schema = typing.get_type_hints(fn).get("cfg")
    if schema is None or not dataclasses.is_dataclass(schema):
        raise SystemExit(f"job._target_: {target} must be a stage runner whose cfg is a dataclass")
    return fn, schema


def _user_error(e: Exception) -> typing.NoReturn:
    from alignment.errors import one_line

    print(f"yialign-synth: error: {one_line(str(e))}", file=sys.stderr)
    raise SystemExit(2)


def run_job(cfg: DictConfig) -> dict:
    """Validate ``cfg.job`` against its runner's schema, run it into ``cfg.out_dir``; returns the result."""
    plain = OmegaConf.to_container(cfg.job, resolve=True)
    target = plain.pop("_target_", None)
    if target is None:
        raise SystemExit("job: missing '_target_' (synth.runner.run or alignment.tasks.evaluate.run)")
    inputs = {str(k): str(v) for k, v in (plain.pop("inputs", None) or {}).items()}
    missing = [k for k, v in inputs.items() if v in ("", "???", "None")]
    if missing:
        raise SystemExit(f"job.inputs.{missing[0]}: give a checkpoint folder, e.g. job.inputs.{missing[0]}=runs/x/sft/model")
    fn, schema = _runner(target)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
    except OmegaConfBaseException as e:
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        raise SystemExit(f"job.{getattr(e, 'full_key', '?')}: {e}\n  known keys of {schema.__qualname__}: {known}") from None
    from alignment.errors import UserError
    from alignment.validate import check_values

    try:
        check_values(typed, "job")
    except UserError as e:
        _user_error(e)
    out_dir = Path(cfg.out_dir)
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = StageContext(
        name=cfg.name, run_dir=out_dir.parent, stage_dir=out_dir, root=cfg, device=device, seed=cfg.seed,
        inputs={k: InputArtifact(k, Path(v), {}, {}) for k, v in inputs.items()},
    )
    try:
        result = fn(typed, ctx)
    except UserError as e:  # a bad input or data file: one line, exit status 2 (as yialign)
        _user_error(e)
    summary = {"outputs": {k: str(out_dir / v) for k, v in result.outputs.items()}, "metrics": result.metrics}
    atomic_write_json(out_dir / "result.json", summary)
    return summary


RECIPES = RECIPES_DIR  # recipes/ of the checkout or of the installed wheel (alignment.paths)


# an absolute config path: a relative one would resolve against the package under `python -m`
@hydra.main(version_base="1.3", config_path=str(RECIPES / "synth"), config_name="dry_run")
def _main(cfg: DictConfig) -> None:
    summary = run_job(cfg)
    json.dump(summary, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def main() -> None:
    """Console-script entry point (``yialign-synth = synth.cli:main``)."""
    # recipes/ on the search path, so recipes may pull shared groups (``/sampler@job.sampler``)
    if not any(a.startswith("hydra.searchpath") for a in sys.argv[1:]):
        sys.argv.append(f"hydra.searchpath=[file://{RECIPES}]")
    _main()


if __name__ == "__main__":
    main()
