"""The pipeline: a Hydra entry point that chains stages, skips finished ones and resumes.

Run as:

    yialign                                   # the default recipe: pipeline=tiny_cpu on CPU
    yialign pipeline=h100_small model=small   # another recipe
    yialign stages=[sft_broad]                # a subset; inputs come from the run dir
    yialign stage.sft_broad.max_steps=20      # any stage field
    yialign run_name=exp1                     # a separate run directory runs/exp1
    yialign --cfg                             # print the composed recipe and exit

For each stage in ``pipeline.order`` the pipeline validates the recipe's ``stage.<name>``
block against the runner's dataclass (unknown keys fail before anything runs), resolves
its ``inputs`` from the run's manifest or explicit paths, and runs it unless the manifest
says it already completed with the same config hash and input hashes. A stage
interrupted before completion is rerun with its stage folder kept, so a training stage
resumes from its last checkpoint. A changed stage is rerun from scratch and, because its
outputs change, so is everything downstream of it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignment.artifacts import Manifest, atomic_write_text, config_hash, content_hash
from alignment.paths import RECIPES_DIR
from alignment.report import format_metrics, stage_table, write_report
from alignment.stage import InputArtifact, StageContext, StageResult

ACCELERATE_DIR = RECIPES_DIR / "accelerate"


class PipelineError(RuntimeError):
    """A user-facing error: bad config, missing input, unwritable run dir. Printed without a traceback."""


# --------------------------------------------------------------------------- schema


@dataclass
class PipelineSpec:
    """``pipeline:`` block of a pipeline recipe.

    Args:
        name (`str`): recipe name; the default run name.
        order (`list[str]`): stage names in execution order; each must have a ``stage.<name>`` block.
        description (`str`, *optional*): one line shown at start.
    """

    name: str = MISSING
    order: list[str] = MISSING
    description: str = ""


@dataclass
class RootConfig:
    """The composed recipe (recipes/config.yaml). Groups ``model``, ``sampler``, ``data`` and
    ``accelerate`` are free-form here and validated by the code that consumes them; each
    ``stage.<name>`` block is validated against its runner's dataclass at start.

    Args:
        pipeline (`PipelineSpec`): which stages, in which order.
        stage (`dict`): per-stage blocks: ``_target_``, ``inputs`` and the runner's fields.
        stages (`list[str]`, *optional*): run only these stages (others must have completed
            already if their outputs are needed).
        run_name (`str`, *optional*, defaults to the pipeline name).
        run_dir (`str`, *optional*, defaults to `runs/${run_name}`).
        seed (`int`, *optional*, defaults to `0`).
        device (`str`, *optional*, defaults to `auto`): ``auto`` picks cuda when available.
        cpu_threads (`int`, *optional*, defaults to `1`): torch intra-op threads on CPU (0 = torch's
            default). One thread is the default because the tiny model's ops are too small to gain
            from more, and on a busy 2-core box 2 threads measured 20-30x slower per training step
            (26 s vs 1.3 s) from OpenMP threads waiting on each other.
        force (`list[str]`, *optional*): stages to rerun even if cached.
        safety (`dict`, *optional*): RAISE switches (``alignment.safety.SafetyConfig``), read by
            the stages through ``${safety}``; ``safety.enabled=true`` turns filters, safety SFT
            targets and sampling guards on.
    """

    pipeline: PipelineSpec = field(default_factory=PipelineSpec)
    model: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    safety: dict[str, Any] = field(default_factory=dict)
    stage: dict[str, Any] = field(default_factory=dict)
    stages: Optional[list[str]] = None
    force: list[str] = field(default_factory=list)
    run_name: str = "${pipeline.name}"
    run_dir: str = "runs/${run_name}"
    seed: int = 0
    device: str = "auto"
    cpu_threads: int = 1


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="root_schema", node=RootConfig)


# --------------------------------------------------------------------------- stage plumbing


def resolve_runner(target: str, where: str) -> Callable[..., StageResult]:
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise PipelineError(f"{where}._target_: cannot import '{target}' ({e})") from e
    return fn


def stage_schema(fn: Callable, where: str) -> type:
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # unresolvable annotation: the runner module is broken
        raise PipelineError(f"{where}: cannot read the type of {fn.__module__}.{fn.__name__}'s cfg ({e})") from e
    params = list(inspect.signature(fn).parameters)
    schema = hints.get("cfg", hints.get(params[0]) if params else None)
    if schema is None or not dataclasses.is_dataclass(schema):
        raise PipelineError(f"{where}: runner {fn.__module__}.{fn.__name__} must annotate cfg with a dataclass")
    return schema


def build_stage_config(name: str, block: DictConfig) -> tuple[Callable, Any, dict[str, str], dict, dict]:
    """Validate ``stage.<name>`` and return (runner, typed cfg, inputs, launch options, resolved plain dict).

    Reserved keys besides the runner's fields: ``_target_``, ``inputs``, and for training
    stages ``accelerate`` (a config name in recipes/accelerate/ or a path) with optional
    ``num_processes``, which run the stage under ``accelerate launch``.
    """
    where = f"stage.{name}"
    if "_target_" not in block:
        raise PipelineError(f"{where}: missing '_target_' (the stage runner, e.g. alignment.train.sft.run)")
    fn = resolve_runner(block._target_, where)
    schema = stage_schema(fn, where)
    try:
        plain = OmegaConf.to_container(block, resolve=True)
    except OmegaConfBaseException as e:
        raise PipelineError(f"{where}: {e}") from None
    inputs = {str(k): str(v) for k, v in (plain.pop("inputs", None) or {}).items()}
    plain.pop("_target_")
    launch = {k: plain.pop(k) for k in ("accelerate", "num_processes") if k in plain}
    launch = {k: v for k, v in launch.items() if v is not None}  # recipes declare them as null
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        raise PipelineError(f"{where}.{key}: {type(e).__name__}: {e.msg if hasattr(e, 'msg') else e}\n"
                            f"  known keys of {schema.__qualname__}: {known}") from None
    return fn, typed, inputs, launch, {"_target_": block._target_, "inputs": inputs, **launch, **plain}


def check_run_dir_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PipelineError(f"cannot write run directory {run_dir}: {e.strerror or e}") from None


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def accelerate_config(name: str, where: str) -> str:
    path = Path(name) if name.endswith(".yaml") else ACCELERATE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(q.stem for q in ACCELERATE_DIR.glob("*.yaml"))
        raise PipelineError(f"{where}: no accelerate config '{name}' ({path}); known: {known}")
    return str(path)


def launch_command(p: "_Planned", run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", p.launch["config_file"]]
    if p.launch.get("num_processes"):
        cmd += ["--num_processes", str(p.launch["num_processes"])]
    return cmd + ["-m", "alignment.launch", str(run_dir), p.name]


def launch_accelerate(p: "_Planned", run_dir: Path) -> StageResult:
    """Run the stage under ``accelerate launch`` (alignment/launch.py) and read back its result."""
    import json
    import subprocess

    from alignment.launch import RESULT_FILE

    result_file = run_dir / p.name / RESULT_FILE
    result_file.unlink(missing_ok=True)
    cmd = launch_command(p, run_dir)
    print("  launch: " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0 or not result_file.exists():
        raise PipelineError(f"stage '{p.name}' failed under accelerate (exit {rc}); command: {' '.join(cmd)}")
    return StageResult(**json.loads(result_file.read_text()))


# --------------------------------------------------------------------------- the run


@dataclass
class _Planned:
    name: str
    fn: Callable
    cfg: Any
    inputs: dict[str, str]
    launch: dict[str, Any]
    config_hash: str


def plan(cfg: DictConfig) -> list[_Planned]:
    """Validate every stage of the recipe before anything runs."""
    unknown = sorted(set(cfg.keys()) - {f.name for f in dataclasses.fields(RootConfig)})
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(RootConfig))
        raise PipelineError(f"unknown top-level key(s) {unknown}; known keys: {known}")
    order = list(cfg.pipeline.order)
    missing = [s for s in order if s not in cfg.stage]
    if missing:
        raise PipelineError(f"pipeline.order names stage(s) {missing} with no stage.<name> block; "
                            f"defined: {sorted(cfg.stage)}")
    for sel in (cfg.stages or []) + list(cfg.force):
        if sel not in order:
            raise PipelineError(f"stages/force: unknown stage '{sel}'; this pipeline has {order}")
    planned = []
    for name in order:
        fn, typed, inputs, launch, plain = build_stage_config(name, cfg.stage[name])
        if "accelerate" in launch:
            launch["config_file"] = accelerate_config(launch["accelerate"], f"stage.{name}.accelerate")
        for inp, src in inputs.items():
            if src in order and order.index(src) >= order.index(name):
                raise PipelineError(f"stage.{name}.inputs.{inp}: '{src}' runs after '{name}'")
            if src not in order and not Path(src).exists():
                raise PipelineError(f"stage.{name}.inputs.{inp}: '{src}' is neither a stage of this "
                                    f"pipeline ({order}) nor an existing path")
        planned.append(_Planned(name, fn, typed, inputs, launch, config_hash(plain)))
    return planned


def _resolve_inputs(p: _Planned, manifest: Manifest, order: list[str]) -> tuple[dict[str, InputArtifact], dict[str, str]]:
    """Inputs that name a stage come from the manifest (it must have completed intact); others are paths."""
    artifacts, hashes = {}, {}
    for inp, src in p.inputs.items():
        if src in order:
            entry = manifest.entry(src)
            if not manifest.outputs_intact(src):
                state = entry.get("status", "missing") if entry else "not run"
                raise PipelineError(
                    f"stage '{p.name}' needs input '{inp}' from stage '{src}', which is {state} in "
                    f"{manifest.run_dir} (run it first, e.g. stages=[{src},{p.name}], or point "
                    f"stage.{p.name}.inputs.{inp} at a path)")
            sdir = manifest.run_dir / src
            outs = {k: sdir / v for k, v in entry["outputs"].items()}
            artifacts[inp] = InputArtifact(src, sdir, outs, entry.get("metrics", {}))
            hashes[inp] = "|".join(f"{k}={entry['output_hashes'][k]}" for k in sorted(outs))
        else:
            path = Path(src)
            if not path.exists():
                raise PipelineError(f"stage '{p.name}': input '{inp}' path {path} does not exist")
            artifacts[inp] = InputArtifact(src, path, {}, {})
            hashes[inp] = content_hash(path)
    return artifacts, hashes


def run_pipeline(cfg: DictConfig) -> dict[str, dict]:
    """Run the recipe; returns the manifest's stage entries. Raises PipelineError on user errors."""
    run_dir = Path(cfg.run_dir)
    planned = plan(cfg)
    check_run_dir_writable(run_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    manifest = Manifest(run_dir)
    device = resolve_device(cfg.device)
    if device == "cpu" and cfg.cpu_threads > 0:
        import torch

        torch.set_num_threads(cfg.cpu_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.cpu_threads)  # worker processes the stages start
    order = [p.name for p in planned]
    selected = set(order if cfg.stages is None else cfg.stages)  # stages=[] only writes config.yaml
    print(f"yialign: pipeline {cfg.pipeline.name} -> {run_dir} ({len(planned)} stages, device {device})", flush=True)

    for i, p in enumerate(planned, 1):
        tag = f"[{i}/{len(planned)}] {p.name}"
        if p.name not in selected:
            print(f"{tag}: not selected", flush=True)
            continue
        artifacts, input_hashes = _resolve_inputs(p, manifest, order)
        entry = manifest.entry(p.name) or {}
        same = entry.get("config_hash") == p.config_hash and entry.get("input_hashes") == input_hashes
        if same and p.name not in cfg.force and manifest.outputs_intact(p.name):
            print(f"{tag}: cached (config and inputs unchanged)", flush=True)
            continue
        stage_dir = run_dir / p.name
        resuming = same and entry.get("status") in ("running", "failed") and stage_dir.exists()
        if not resuming and stage_dir.exists():
            shutil.rmtree(stage_dir)  # changed config or inputs: start the stage afresh
        stage_dir.mkdir(parents=True, exist_ok=True)
        print(f"{tag}: {'resuming' if resuming else 'running'} ({p.fn.__module__}.{p.fn.__name__})", flush=True)
        manifest.update(p.name, status="running", config_hash=p.config_hash, input_hashes=input_hashes,
                        inputs=p.inputs, outputs={}, output_hashes={}, metrics={}, started=time.time())
        ctx = StageContext(name=p.name, run_dir=run_dir, stage_dir=stage_dir, inputs=artifacts,
                           root=cfg, device=device, seed=int(cfg.seed))
        t0 = time.perf_counter()
        try:
            result = launch_accelerate(p, run_dir) if p.launch.get("config_file") else p.fn(p.cfg, ctx)
        except BaseException as e:
            manifest.update(p.name, status="failed", error=f"{type(e).__name__}: {e}",
                            wall_time_s=round(time.perf_counter() - t0, 2))
            raise
        wall = time.perf_counter() - t0
        if not isinstance(result, StageResult):
            raise PipelineError(f"stage '{p.name}': runner returned {type(result).__name__}, not StageResult")
        outputs, hashes = {}, {}
        for key, rel in result.outputs.items():
            path = (stage_dir / rel).resolve()
            if not path.is_relative_to(stage_dir.resolve()) or not path.exists():
                raise PipelineError(f"stage '{p.name}': output '{key}' ({rel}) is missing or outside {stage_dir}")
            outputs[key] = str(path.relative_to(stage_dir.resolve()))
            hashes[key] = content_hash(path)
        manifest.update(p.name, status="completed", outputs=outputs, output_hashes=hashes,
                        metrics=result.metrics, wall_time_s=round(wall, 2), finished=time.time(), error=None)
        print(f"{tag}: done in {wall:.1f}s  {format_metrics(result.metrics)}", flush=True)

    print(stage_table(manifest, order), flush=True)
    if planned:
        md, page = write_report(run_dir, order, title=f"{cfg.pipeline.name}: {cfg.pipeline.description}".rstrip(": "))
        print(f"report: {md} and {page}", flush=True)
    return manifest.stages


# --------------------------------------------------------------------------- entry point


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose a recipe without running it (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def main(argv: list[str] | None = None) -> int:
    """``yialign``: compose recipes/config.yaml with the command-line overrides and run it."""
    from hydra.errors import HydraException

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    import alignment  # noqa: F401  registers the model with the Auto classes

    show_cfg = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    try:
        cfg = compose(args)
        if show_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        run_pipeline(cfg)
    except (PipelineError, HydraException, OmegaConfBaseException) as e:
        print(f"yialign: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
