"""The ``synth`` stage: search + verifiers over training problems -> SFT, pairs, process labels.

Pipeline use (recipes/stage/synth.yaml)::

    stage:
      synth:
        _target_: synth.runner.run
        inputs: {policy: sft_broad}     # the policy checkpoint: ctx.input("policy", "model")
        sampler: ${sampler}

Standalone: ``yialign-synth`` (synth/cli.py) runs the same code from recipes/synth/*.yaml.

Flow: load problems (training splits only) -> for each problem, search (MCTS or DFS) with
the policy built by ``alignment.sampling.build_sampler`` and the verifier of its kind ->
write its result to ``<stage_dir>/.synth-work/<index>.json`` (atomic) -> when all are done,
write ``sft.jsonl``, ``pairs.jsonl``, ``process.jsonl`` (+ ``trees.jsonl`` if asked) and a
data card per file. Problems already in the work folder are not redone (resume); the work
folder is discarded when the config changes. Problems are searched in fixed groups of
``batch_problems`` whose sampler calls are merged into batched ones (lockstep.py);
``workers > 1`` runs groups in spawned worker processes, each with its own sampler; a tqdm
bar counts finished problems. Every search is seeded from (seed, problem id) and groups are
fixed by index, so the same seed and config give byte-identical files whatever the number
of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from alignment.artifacts import atomic_write_json, atomic_write_jsonl, config_hash, content_hash
from alignment.errors import ConfigError
from alignment.stage_contract import StageContext, StageResult
from alignment.tasks.format import user_message
from alignment.tasks.problems import Problem, ProblemSpec, training_problems
from synth.outputs import GENERATOR_VERSION, build_datasets, summarize, write_dataset_card
from synth.search.tree import SearchConfig, derive_seed

WORK_DIR = ".synth-work"  # dot-prefixed: scratch, not part of the stage's content hash


@dataclass
class SynthConfig:
    """Schema of ``stage.synth`` (and of the ``yialign-synth`` recipes).

    Args:
        problems (`list[ProblemSpec]`): problem sources and counts.
        search (`SearchConfig`): algorithm and budgets (synth/search/tree.py).
        sampler (`dict`, *optional*): the ``sampler`` group (backend, batching), for ``build_sampler``.
        policy (`str`, *optional*, defaults to `"checkpoint"`): ``checkpoint`` samples from the
            ``policy`` input's model; ``reference`` replays the problems' reference solutions
            with seeded mistakes (a model-free dry run of a recipe; not training data).
        reference_p_correct (`float`, *optional*, defaults to `0.7`): step accuracy of the reference policy.
        seed (`int`, *optional*, defaults to `0`): search seed.
        workers (`int`, *optional*, defaults to `1`): worker processes (each loads its own sampler).
        batch_problems (`int`, *optional*, defaults to `8`): problems a worker searches in lockstep,
            merging their sampler calls into batched ones (synth/search/lockstep.py). Part of the
            config identity: results depend on how problems are grouped, not on ``workers``.
        max_sft_per_problem (`int`, *optional*, defaults to `4`): distinct verified responses kept per problem.
        min_pair_gap (`float`, *optional*, defaults to `0.5`): smallest best-worst score gap for a pair.
        code_timeout_s (`float`, *optional*, defaults to `5.0`): sandbox wall limit per code verdict.
        check_steps (`bool`, *optional*, defaults to `True`): a math solution counts as solved only if it
            states no wrong arithmetic on the way (``MathVerifier(check_steps=True)``): a right answer
            reached through a wrong step is not kept as a verified solution or a chosen answer.
        write_trees (`bool`, *optional*, defaults to `False`): also write the searched trees (trees.jsonl).
        device (`str`, *optional*, defaults to `""`): sampler device; empty = the pipeline's device.
        start_method (`str`, *optional*, defaults to `"spawn"`): how worker processes start. ``spawn``
            is safe with torch threads and CUDA; ``fork`` starts in milliseconds and is fine for the
            model-free ``reference`` policy (tests use it).
    """

    problems: list[ProblemSpec] = MISSING
    search: SearchConfig = field(default_factory=SearchConfig)
    sampler: dict[str, Any] = field(default_factory=dict)
    policy: str = "checkpoint"
    reference_p_correct: float = 0.7
    seed: int = 0
    workers: int = 1
    batch_problems: int = 8
    max_sft_per_problem: int = 4
    min_pair_gap: float = 0.5
    code_timeout_s: float = 5.0
    check_steps: bool = True
    write_trees: bool = False
    device: str = ""
    start_method: str = "spawn"


# --------------------------------------------------------------------------- problems


def build_problems(specs: list[ProblemSpec]) -> list[Problem]:
    return training_problems(specs, "problems")


# --------------------------------------------------------------------------- policy in a worker


@dataclass
class PolicySpec:
    """Everything a worker needs to build its own sampler (picklable)."""

    kind: str  # checkpoint | reference
    model_path: str = ""
    sampler: dict = field(default_factory=dict)
    device: str = "cpu"
    p_correct: float = 0.7
    problems: list[dict] = field(default_factory=list)

    def build(self):
        """(sampler, render function)."""
        from alignment.tasks.format import chat_render, plain_render

        if self.kind == "reference":
            from synth.search.scripted_sampler import ScriptedSampler

            return ScriptedSampler([Problem.from_dict(p) for p in self.problems], self.p_correct), plain_render
        if self.kind != "checkpoint":
            raise ConfigError(f"policy must be 'checkpoint' or 'reference', got {self.kind!r}")
        from transformers import AutoTokenizer

        import alignment.model  # noqa: F401  (registers yi_lightning before the tokenizer reads config.json; the
        # editable install maps `alignment` as a namespace package outside the repo dir, so `import alignment` may not)

        from alignment.sampling import build_sampler

        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        sampler = build_sampler(self.sampler, self.model_path, tokenizer=tokenizer, device=self.device)
        render = chat_render(tokenizer) if tokenizer.chat_template else plain_render
        return sampler, render


_WORKER: dict[str, Any] = {}


def _init_worker(policy: PolicySpec, search: SearchConfig, seed: int, code_timeout_s: float, check_steps: bool, work: str,
                 write_trees: bool, threads: int) -> None:
    if threads and policy.kind == "checkpoint":
        import torch

        torch.set_num_threads(threads)  # workers share the cores: one thread each avoids oversubscription
    from alignment.tasks.verify import get_verifier

    sampler, render = policy.build()
    _WORKER.update(sampler=sampler, render=render, search=search, seed=seed, work=Path(work), write_trees=write_trees,
                   verifiers={"math": get_verifier("math", check_steps=check_steps),
                              "code": get_verifier("code", timeout_s=code_timeout_s)})


def _solve(group: list[tuple[int, dict]]) -> list[tuple[int, bool, float]]:
    """Search one group of problems in lockstep (batched sampler calls) and write each result
    file; returns (index, solved, wall seconds) per problem."""
    from synth.search import search
    from synth.search.lockstep import search_many

    w = _WORKER
    problems = [Problem.from_dict(pdict) for _, pdict in group]

    def run_one(problem: Problem, sampler):
        return search(problem, sampler, w["verifiers"][problem.kind], w["search"], seed=derive_seed(w["seed"], problem.id), render=w["render"])

    out = []
    for (index, _), problem, res in zip(group, problems, search_many(problems, w["sampler"], run_one)):
        stats = {k: v for k, v in res.stats.items() if k != "wall_s"}  # wall time would break byte-identity
        result = {
            "index": index, "problem_id": problem.id, "source": problem.source, "kind": problem.kind,
            "user": user_message(problem),
            "candidates": [asdict(c) for c in res.candidates],
            "tree": res.root.to_dict(),
            "stats": stats,
        }
        atomic_write_json(w["work"] / f"{index:06d}.json", result, indent=None)
        out.append((index, bool(stats["solved"]), res.stats["wall_s"]))
    return out


# --------------------------------------------------------------------------- driver


def _prepare_work_dir(work: Path, key: str) -> set[int]:
    """Keep finished results only if they came from the same config; returns finished indices."""
    meta = work / "run.json"
    if work.exists():
        try:
            same = json.loads(meta.read_text())["config_hash"] == key
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta, {"config_hash": key})
    return {int(p.stem) for p in work.glob("[0-9]*.json")}


def generate(problems: list[Problem], policy: PolicySpec, cfg: SynthConfig, out_dir: Path, stage: str = "synth",
             progress: bool = True) -> tuple[dict[str, str], dict[str, Any]]:
    """Search every problem (resuming finished ones) and write the datasets into ``out_dir``.

    Returns (outputs: name -> file name, metrics).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    search_cfg = cfg.search if isinstance(cfg.search, SearchConfig) else SearchConfig(**cfg.search)
    identity = {
        "generator": GENERATOR_VERSION, "search": asdict(search_cfg), "seed": cfg.seed, "policy": policy.kind,
        "model": policy.model_path, "p_correct": policy.p_correct if policy.kind == "reference" else None,
        "code_timeout_s": cfg.code_timeout_s, "check_steps": cfg.check_steps, "batch_problems": cfg.batch_problems,
        "problems": [p.id for p in problems],
    }
    work = out_dir / WORK_DIR
    done = _prepare_work_dir(work, config_hash(identity))
    # groups are fixed by index (lockstep batching makes results depend on the group), and a
    # group is redone whole unless every member finished
    size = max(1, cfg.batch_problems)
    groups = [list(range(g, min(g + size, len(problems)))) for g in range(0, len(problems), size)]
    todo = [[(i, problems[i].to_dict()) for i in g] for g in groups if not all(i in done for i in g)]
    n_todo = sum(len(g) for g in todo)
    init_args = (policy, search_cfg, cfg.seed, cfg.code_timeout_s, cfg.check_steps, str(work), cfg.write_trees)
    t0 = time.monotonic()
    walls: list[float] = []
    bar = tqdm(total=len(problems), initial=len(problems) - n_todo, desc="synth", unit="problem", disable=not progress)
    if todo and cfg.workers > 1:
        # spawn by default: fork after torch/threads is unsafe. ProcessPoolExecutor (not mp.Pool) so a
        # worker that fails to start raises BrokenProcessPool instead of being respawned forever
        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context(cfg.start_method), initializer=_init_worker,
                                 initargs=(*init_args, 1)) as pool:
            for fut in as_completed([pool.submit(_solve, group) for group in todo]):
                for _, solved, wall in fut.result():
                    walls.append(wall)
                    bar.update(1)
    elif todo:
        _init_worker(*init_args, 0)
        try:
            for group in todo:
                for _, solved, wall in _solve(group):
                    walls.append(wall)
                    bar.update(1)
        finally:  # the next stage may load a model on the same card: free a vLLM engine now
            from alignment.sampling import close_sampler

            close_sampler(_WORKER.pop("sampler"))
    bar.close()
    elapsed = time.monotonic() - t0

    results = []
    for i in range(len(problems)):
        with open(work / f"{i:06d}.json", encoding="utf-8") as f:
            results.append(json.load(f))
    data = build_datasets(results, cfg.max_sft_per_problem, cfg.min_pair_gap)
    if cfg.write_trees:
        data["trees"] = [{"problem_id": r["problem_id"], "tree": r["tree"]} for r in results]
    summary = summarize(results)
    card_config = {"search": asdict(search_cfg), "problems": [asdict(s) if isinstance(s, ProblemSpec) else dict(s) for s in cfg.problems],
                   "policy": policy.kind, "seed": cfg.seed, "batch_problems": cfg.batch_problems, "max_sft_per_problem": cfg.max_sft_per_problem,
                   "min_pair_gap": cfg.min_pair_gap, "code_timeout_s": cfg.code_timeout_s, "check_steps": cfg.check_steps}
    from alignment.tasks.verify.code import CodeVerifier
    from alignment.tasks.verify.math import MathVerifier

    verifiers = {"math": MathVerifier.version, "code": CodeVerifier.version}
    outputs: dict[str, str] = {}
    for name, rows in data.items():
        path = atomic_write_jsonl(out_dir / f"{name}.jsonl", rows)
        fields = list(rows[0]) if rows else []
        write_dataset_card(out_dir / f"{name}.card.md", name, fields, len(rows), path, summary,
                           card_config, cfg.seed, stage, verifiers)
        outputs[name] = path.name
    metrics = {
        "problems": summary["problems"], "solved": summary["solved"], "solve_rate": summary["solve_rate"],
        "response_pass_rate": summary["response_pass_rate"], "infra_faults": summary["infra_faults"],
        "sft_records": len(data["sft"]), "pairs": len(data["pairs"]), "process_rows": len(data["process"]),
        "tokens": summary["tokens"], "resumed_problems": len(problems) - n_todo,
        "problems_per_min": round(60 * len(walls) / elapsed, 3) if walls and elapsed > 0 else 0.0,
    }
    return outputs, metrics


def run(cfg: SynthConfig, ctx: StageContext) -> StageResult:
    """Stage runner: the policy checkpoint comes from ``ctx.input("policy", "model")``."""
    problems = build_problems(list(cfg.problems))
    if cfg.policy == "checkpoint":
        from alignment.checkpoints import check_model_dir

        model_path = str(check_model_dir(ctx.input("policy", "model"), f"stage '{ctx.name}' input 'policy'"))
        policy = PolicySpec("checkpoint", model_path=model_path, sampler=dict(cfg.sampler), device=cfg.device or ctx.device)
    else:
        policy = PolicySpec(cfg.policy, p_correct=cfg.reference_p_correct, problems=[p.to_dict() for p in problems])
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    outputs, metrics = generate(problems, policy, cfg, ctx.stage_dir, stage=ctx.name)
    if cfg.policy == "checkpoint":
        metrics["policy_hash"] = content_hash(model_path)[:16]
    # "dataset" is the conventional name downstream SFT stages read
    return StageResult(outputs={**outputs, "dataset": outputs["sft"]}, metrics=metrics)

