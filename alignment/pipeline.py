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

One process at a time works on a run directory (``run_lock``; ``lock_timeout=S`` waits). A
user error (``alignment.errors.UserError``: bad config value, data row, input or checkpoint,
corrupt manifest, locked or unwritable run directory) prints one line and exits 2; the config,
its ranges and the files the selected stages name are checked before the run directory is
touched, and a stage that stops on a user error gets its folder, manifest entry and
``config.yaml`` back as they were. A finished stage's trainer checkpoints are deleted unless
``keep_checkpoints=true``.
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

from alignment.artifacts import Manifest, apply_umask, atomic_write_text, config_hash, content_hash, row_limit, run_lock
from alignment.errors import ConfigError, DataError, UserError, one_line
from alignment.paths import RECIPES_DIR
from alignment.report import format_metrics, stage_table, write_report
from alignment.stage_contract import InputArtifact, StageContext, StageResult
from alignment.train.args import RENAMED_KEYS

ACCELERATE_DIR = RECIPES_DIR / "accelerate"
# where rank 0 of a stage run under accelerate (alignment/launch.py) leaves its StageResult
RESULT_FILE = ".result.json"


class PipelineError(UserError, RuntimeError):
    """A user-facing error: bad config, missing input, unwritable run dir. Printed without a traceback.

    Every :class:`alignment.errors.UserError` (bad data rows, missing files, bad checkpoints, a
    locked run directory) is handled the same way: one line on stderr, exit status 2."""


class StageFailed(RuntimeError):
    """A stage crashed (not a user error): recorded as ``failed`` in the manifest; a rerun resumes it."""


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
        max_row_bytes (`int`, *optional*, defaults to `1048576`): longest JSONL line (bytes) any
            reader accepts; a longer row stops the stage with an error naming the file and line.
        keep_checkpoints (`bool`, *optional*, defaults to `False`): keep a finished stage's trainer
            checkpoints (``<stage>/checkpoints``). Only a resume of an unfinished stage reads them, so
            by default they are deleted once the stage completes.
        lock_timeout (`float`, *optional*, defaults to `0`): seconds to wait when another process
            holds the run directory's lock (0: refuse at once, naming its pid; -1: wait for it).
        vars (`dict`, *optional*): a recipe's own named values, read by interpolation
            (``${vars.sweep_from}``) and set like any key (``vars.sweep_from=/tmp/runs/h100_small``);
            the pipeline itself reads none of them.
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
    max_row_bytes: int = 1 << 20
    keep_checkpoints: bool = False
    lock_timeout: float = 0.0
    vars: dict[str, Any] = field(default_factory=dict)


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
    """Validate ``stage.<name>`` and return (runner, typed cfg, inputs, launch options, identity dict).

    The identity dict (what the stage's config hash is taken of) holds the *typed* config, defaults
    included: the stage YAMLs list only what differs from the schema, and a changed default must
    still rerun the stage.

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
    # an input set to null is dropped (a recipe removes one its stage defaults name)
    inputs = {str(k): str(v) for k, v in (plain.pop("inputs", None) or {}).items() if v is not None}
    plain.pop("_target_")
    launch = {k: plain.pop(k) for k in ("accelerate", "num_processes") if k in plain}
    launch = {k: v for k, v in launch.items() if v is not None}  # recipes declare them as null
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
    except OmegaConfBaseException as e:
        from omegaconf.errors import ConfigKeyError

        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        msg = (str(e.msg) if hasattr(e, "msg") else str(e)).strip().splitlines()[0]
        if isinstance(e, ConfigKeyError):
            owner = _schema_at(schema, str(key))
            known = ", ".join(f.name for f in dataclasses.fields(owner))
            renamed = RENAMED_KEYS.get(str(key).rpartition(".")[2])
            hint = f"; it was renamed: use {renamed}" if renamed else ""
            raise PipelineError(f"{where}.{key}: unknown key ({msg}){hint}; known keys of {owner.__qualname__}: {known}") from None
        raise PipelineError(f"{where}.{key}: {type(e).__name__}: {msg}") from None
    try:
        from alignment.validate import check_values

        check_values(typed, where)
    except ConfigError as e:
        raise PipelineError(str(e)) from None
    return fn, typed, inputs, launch, {"_target_": block._target_, "inputs": inputs, **launch, **dataclasses.asdict(typed)}


def _schema_at(schema: type, key: str) -> type:
    """The dataclass that holds the last part of ``key`` (``hard.nope`` -> HardSelectionSpec)."""
    import re

    parts = [p for p in re.sub(r"\[\d+\]", "", key).split(".") if p]
    for part in parts[:-1]:
        try:
            hint = typing.get_type_hints(schema).get(part)
        except Exception:
            return schema
        for cand in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(cand):
                schema = cand
                break
        else:
            return schema
    return schema


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

    result_file = run_dir / p.name / RESULT_FILE
    result_file.unlink(missing_ok=True)
    cmd = launch_command(p, run_dir)
    print("  launch: " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else None
    result_file.unlink(missing_ok=True)
    if result is not None and "user_error" in result:  # a rank stopped on a bad config/data/input
        raise PipelineError(result["user_error"])
    if rc != 0 or result is None:
        raise StageFailed(f"stage '{p.name}' failed under accelerate (exit {rc}); command: {' '.join(cmd)}")
    return StageResult(**result)


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
    _check_root_values(cfg)
    planned = []
    for name in order:
        fn, typed, inputs, launch, identity = build_stage_config(name, cfg.stage[name])
        if "accelerate" in launch:
            launch["config_file"] = accelerate_config(launch["accelerate"], f"stage.{name}.accelerate")
        for inp, src in inputs.items():
            if src in order and order.index(src) >= order.index(name):
                raise PipelineError(f"stage.{name}.inputs.{inp}: '{src}' runs after '{name}'")
            if src not in order:
                _check_path_input(Path(src), f"stage.{name}.inputs.{inp}", order)
        planned.append(_Planned(name, fn, typed, inputs, launch, config_hash(identity)))
    return planned


def _check_root_values(cfg: DictConfig) -> None:
    """Ranges of the top-level values, and the ``model`` preset's keys, before any stage runs."""
    from alignment.validate import check_values

    try:
        check_values({k: cfg.get(k) for k in ("seed", "cpu_threads", "max_row_bytes")}, "", owner="RootConfig")
    except ConfigError as e:
        raise PipelineError(str(e).lstrip(".")) from None
    if cfg.lock_timeout < 0 and cfg.lock_timeout != -1:
        raise PipelineError(f"lock_timeout={cfg.lock_timeout}: must be >= 0 (seconds) or -1 (wait as long as it takes)")
    if cfg.model:
        from alignment.model.config import config_from_dict

        try:
            config_from_dict(OmegaConf.to_container(cfg.model, resolve=True), source="model")
        except (KeyError, ValueError, TypeError) as e:
            raise PipelineError(one_line(e.args[0] if isinstance(e, KeyError) and e.args else str(e))) from None


def _check_path_input(path: Path, where: str, order: list[str]) -> None:
    """An explicit path input must exist; a folder must not be empty, and a model folder must be complete."""
    if not path.exists():
        raise PipelineError(f"{where}: '{path}' is neither a stage of this pipeline ({order}) nor an existing path")
    if path.is_dir():
        from alignment.checkpoints import check_model_dir

        if not any(path.iterdir()):
            raise PipelineError(f"{where}: {path} is an empty folder")
        if (path / "config.json").exists() or any(path.glob("*.safetensors")):
            try:
                check_model_dir(path, where)
            except DataError as e:
                raise PipelineError(str(e)) from None


def preflight(planned: list["_Planned"], selected: set[str]) -> None:
    """Files the selected stages' configs name (data sources, eval sets, prompts) must exist.

    Config-only and cheap: the rows themselves are checked by the readers, when the stage reads them,
    before it writes anything."""
    for p in planned:
        if p.name in selected:
            _check_paths(p.cfg, f"stage.{p.name}")


_PATH_FIELDS = ("path", "extra_paths", "tokenizer_path")


def _check_paths(obj: Any, where: str) -> None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{where}.{f.name}"
            if f.name in _PATH_FIELDS:
                for i, v in enumerate(value if isinstance(value, list) else [value]):
                    if isinstance(v, str) and v and ":" not in v.split("/")[0] and not Path(v).exists():
                        raise PipelineError(f"{key}{f'[{i}]' if isinstance(value, list) else ''}: {v} does not exist")
            else:
                _check_paths(value, key)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_paths(v, f"{where}[{i}]")


def _resolve_inputs(p: _Planned, manifest: Manifest, order: list[str]) -> tuple[dict[str, InputArtifact], dict[str, str]]:
    """Inputs that name a stage come from the manifest (it must have completed intact); others are paths."""
    artifacts, hashes = {}, {}
    for inp, src in p.inputs.items():
        if src in order:
            entry = manifest.entry(src)
            if not manifest.outputs_intact(src):
                changed = manifest.changed_output(src)
                if changed is not None:
                    raise PipelineError(
                        f"stage '{p.name}' needs input '{inp}' from stage '{src}', whose output '{changed}' "
                        f"({manifest.run_dir / src / entry['outputs'][changed]}) is missing or changed since it "
                        f"completed; rerun it (stages=[{src},{p.name}] force=[{src}])")
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
    """Run the recipe; returns the manifest's stage entries.

    Raises a :class:`alignment.errors.UserError` (``PipelineError``, ``DataError``, ...) for a bad
    config, input or data file, a locked run directory: the config is checked before the run
    directory is touched, and a stage that stops on a user error leaves its folder, its manifest
    entry and ``config.yaml`` as they were. One process at a time works on a run directory
    (:func:`alignment.artifacts.run_lock`)."""
    run_dir = Path(cfg.run_dir)
    planned = plan(cfg)
    order = [p.name for p in planned]
    selected = set(order if cfg.stages is None else cfg.stages)  # stages=[] only writes config.yaml
    preflight(planned, selected)
    check_run_dir_writable(run_dir)
    with run_lock(run_dir, float(cfg.lock_timeout), command=" ".join(["yialign", *sys.argv[1:]])), \
            row_limit(int(cfg.max_row_bytes)):
        return _run_locked(cfg, planned, run_dir, order, selected)


def _run_locked(cfg: DictConfig, planned: list[_Planned], run_dir: Path, order: list[str], selected: set[str]) -> dict[str, dict]:
    for stale in run_dir.glob(".*.prev-*"):  # stage folders set aside by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    manifest = Manifest(run_dir)
    device = resolve_device(cfg.device)
    if device == "cpu" and cfg.cpu_threads > 0:
        import torch

        torch.set_num_threads(cfg.cpu_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.cpu_threads)  # worker processes the stages start
    config_path = run_dir / "config.yaml"
    old_config = config_path.read_bytes() if config_path.exists() else None
    atomic_write_text(config_path, OmegaConf.to_yaml(cfg))
    print(f"yialign: pipeline {cfg.pipeline.name} -> {run_dir} ({len(planned)} stages, device {device})", flush=True)

    ran = 0
    try:
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
                if not cfg.keep_checkpoints:
                    _prune(run_dir / p.name)
                continue
            _run_stage(cfg, p, tag, manifest, artifacts, input_hashes, same, device)
            ran += 1
    except UserError:
        if ran == 0:  # nothing of this invocation stays: neither does its config.yaml
            if old_config is None:
                config_path.unlink(missing_ok=True)
            elif config_path.read_bytes() != old_config:
                from alignment.artifacts import atomic_write_bytes

                atomic_write_bytes(config_path, old_config)
        raise

    print(stage_table(manifest, order), flush=True)
    if planned:
        md, page = write_report(run_dir, order, title=f"{cfg.pipeline.name}: {cfg.pipeline.description}".rstrip(": "))
        print(f"report: {md} and {page}", flush=True)
    return manifest.stages


def _prune(stage_dir: Path) -> None:
    """A finished stage keeps its outputs, not its trainer checkpoints (only a resume reads those)."""
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)


def _run_stage(cfg: DictConfig, p: _Planned, tag: str, manifest: Manifest, artifacts: dict[str, InputArtifact],
               input_hashes: dict[str, str], same: bool, device: str) -> None:
    """Run one stage and record it. A user error puts its folder and manifest entry back as they were;
    any other exception records it as failed (a rerun with the same config resumes it)."""
    import copy

    run_dir = manifest.run_dir
    stage_dir = run_dir / p.name
    entry = manifest.entry(p.name) or {}
    previous = copy.deepcopy(manifest.entry(p.name))
    resuming = same and entry.get("status") in ("running", "failed") and stage_dir.exists()
    aside = None
    if not resuming and stage_dir.exists():
        # changed config or inputs: the stage starts afresh; its old folder waits aside until it
        # either completes (then it is deleted) or stops on a user error (then it comes back)
        aside = run_dir / f".{p.name}.prev-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(stage_dir, aside)
    stage_dir.mkdir(parents=True, exist_ok=True)
    print(f"{tag}: {'resuming' if resuming else 'running'} ({p.fn.__module__}.{p.fn.__name__})", flush=True)
    manifest.update(p.name, status="running", config_hash=p.config_hash, input_hashes=input_hashes,
                    inputs=p.inputs, outputs={}, output_hashes={}, metrics={}, started=time.time())
    ctx = StageContext(name=p.name, run_dir=run_dir, stage_dir=stage_dir, inputs=artifacts,
                       root=cfg, device=device, seed=int(cfg.seed))
    t0 = time.perf_counter()
    try:
        result = launch_accelerate(p, run_dir) if p.launch.get("config_file") else p.fn(p.cfg, ctx)
        if not isinstance(result, StageResult):
            raise StageFailed(f"stage '{p.name}': runner returned {type(result).__name__}, not StageResult")
        outputs, hashes = {}, {}
        for key, rel in result.outputs.items():
            path = (stage_dir / rel).resolve()
            if not path.is_relative_to(stage_dir.resolve()) or not path.exists():
                raise StageFailed(f"stage '{p.name}': output '{key}' ({rel}) is missing or outside {stage_dir}")
            outputs[key] = str(path.relative_to(stage_dir.resolve()))
            hashes[key] = content_hash(path)
    except UserError:
        if not resuming:
            shutil.rmtree(stage_dir, ignore_errors=True)
            if aside is not None:
                os.replace(aside, stage_dir)
        manifest.restore(p.name, previous)
        raise
    except BaseException as e:
        manifest.update(p.name, status="failed", error=f"{type(e).__name__}: {e}",
                        wall_time_s=round(time.perf_counter() - t0, 2))
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    wall = time.perf_counter() - t0
    manifest.update(p.name, status="completed", outputs=outputs, output_hashes=hashes,
                    metrics=result.metrics, wall_time_s=round(wall, 2), finished=time.time(), error=None)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    if not cfg.keep_checkpoints:
        _prune(stage_dir)
    apply_umask(stage_dir)  # e.g. safetensors writes its weights 0600
    print(f"{tag}: done in {wall:.1f}s  {format_metrics(result.metrics)}", flush=True)


# --------------------------------------------------------------------------- entry point


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose a recipe without running it (tests, notebooks).

    Stage YAMLs hold only what differs from their schema's defaults, so ``stage.<name>.<field>=v``
    may name a field the YAML leaves out; such an override is added (as ``+stage...`` would be) and
    :func:`plan` checks it against the schema like any recipe key. When adding it fails too (no
    such stage, a path through an interpolation), the original error stands.
    """
    import re

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException

    register_configs()
    added, first = list(overrides or []), None
    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base="1.3"):
        while True:
            try:
                cfg = hydra_compose(config_name=config_name, overrides=added)
            except ConfigCompositionException as e:
                first = first or e  # the error to report is the one of the overrides as given
                m = re.match(r"Could not override '(stage\.[^.']+\.[^']+)'", str(e))
                i = next((j for j, a in enumerate(added) if m and a.split("=", 1)[0] == m.group(1)), None)
                if i is None:
                    raise first
                added[i] = "+" + added[i]
                continue
            if first is None or all(a.split(".")[1] in cfg.pipeline.order for a in added if a.startswith("+stage.")):
                return cfg
            raise first


def explain_compose_error(e: Exception, args: list[str]) -> str:
    """One line for a Hydra/OmegaConf composition error, naming the override and what would work.

    A misspelled group option lists the group's options; a value of the wrong type says why; an
    unknown key lists the known keys of the block it was meant for (the same message ``plan`` gives
    for a recipe), instead of Hydra's "use +key" hint."""
    import re

    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(e, MissingConfigException) and getattr(e, "options", None) is not None:
        group, _, name = str(getattr(e, "missing_cfg_file", "")).rpartition("/")
        if group:
            return f"{group}={name}: no such option in config group '{group}'; choose one of: {', '.join(e.options)}"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: cannot parse this override ({one_line(e.message).split('; See')[0]})"
    cause = e.__cause__
    cause_msg = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0] if cause else ""
    m = re.match(r"Error merging override (.+)", str(e))
    if m and cause is not None:
        return f"{m.group(1)}: {cause_msg}"
    m = re.match(r"Could not override '([^']+)'", str(e))
    if m:
        key = m.group(1)
        override = next((a for a in args if a.split("=", 1)[0].lstrip("~+") == key), f"{key}=...")
        top = key.split(".")[0]
        if "." not in key:
            known = ", ".join(f.name for f in dataclasses.fields(RootConfig))
            return f"{key}: unknown key; known top-level keys: {known} (stage fields are stage.<name>.<field>)"
        through = _interpolation_on_path([a for a in args if a != override], key)
        if through is not None:
            return through
        # compose again with the key added, only to let plan() name the block and its known keys
        try:
            cfg = compose([("+" + a if a == override else a) for a in args])
            if top == "stage" and key.split(".")[1] not in cfg.pipeline.order:
                return f"{key}: '{key.split('.')[1]}' is not a stage of pipeline {cfg.pipeline.name} (its stages: {', '.join(cfg.pipeline.order)})"
            plan(cfg)
        except (UserError, Exception) as again:  # noqa: BLE001  only its message is used
            if isinstance(again, UserError) and key in str(again) or (top == "model" and isinstance(again, UserError)):
                return one_line(str(again))
        return f"{key}: unknown key ({cause_msg}); add it anyway with +{override}"
    return one_line(str(e))


def _interpolation_on_path(args: list[str], key: str) -> str | None:
    """When ``key`` passes through an interpolated block (``stage.sft_broad.mixture`` is
    ``${data.sft_broad}``), say which key to override instead; None otherwise."""
    try:
        node: Any = compose(args)
    except Exception:  # noqa: BLE001  the other overrides fail too: the caller's message stands
        return None
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        if OmegaConf.is_interpolation(node, part):
            ref = str(node._get_node(part)._value())
            if ref.startswith("${") and ref.endswith("}") and ref.count("${") == 1:
                target = ".".join([ref[2:-1], *parts[i + 1:]])
                return f"{key}: {'.'.join(parts[:i + 1])} is {ref}; override {target} instead"
            return None
        node = node._get_node(part)
    return None


def main(argv: list[str] | None = None) -> int:
    """``yialign``: compose recipes/config.yaml with the command-line overrides and run it.

    Exit status: 0 done; 2 a user error (config, data, inputs, run directory), printed as one line
    with nothing of the failed stage left behind; 1 a stage crashed (its traceback, or one line when
    it ran under accelerate); a rerun resumes it."""
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
    except (HydraException, OmegaConfBaseException) as e:
        print(f"yialign: error: {explain_compose_error(e, args)}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"yialign: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"yialign: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
