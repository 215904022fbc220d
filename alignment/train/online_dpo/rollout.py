"""One round's rollout: the prompt pool, sampling candidates, the frontier probe, reward scores and
verdicts (``alignment.train.online_dpo``; the round that calls these is ``round.py``).

    items = load_prompts(cfg.prompts, ctx)                            # PromptItem per prompt
    items, m = select_frontier(sampler, items, cfg.frontier, probe, verify)   # optional
    groups = generate_candidates(sampler, items, n, params)           # n samples per prompt
    rows, timings = score_candidates(items, groups, make_scorer, verify)
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from alignment.artifacts import read_jsonl
from alignment.errors import ConfigError, DataError, MissingFileError
from alignment.sampling import Prompt, Sample, Sampler, SamplingParams
from alignment.stage_contract import StageContext
from alignment.tasks.format import task_message
from alignment.tasks.problems import training_problems
from alignment.train.online_dpo.config import FrontierSpec, PromptsConfig
from alignment.train.online_dpo.shard import Shard, prompt_seed

# --------------------------------------------------------------------------- prompts


@dataclass
class PromptItem:
    """One prompt of the round. ``problem`` (what the verifier reads) is None without a known answer."""

    id: str
    prompt: Prompt
    kind: str | None = None
    problem: Any = None


def _is_messages(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and all(isinstance(m, dict) and "role" in m and "content" in m for m in p)


def to_prompt_item(obj: Any, index: int, where: str, chat: bool) -> PromptItem:
    """Normalise a problem object, a row dict or a bare prompt into a :class:`PromptItem`."""
    if isinstance(obj, str) or _is_messages(obj):
        row = {"prompt": obj}
    elif isinstance(obj, Mapping):
        row = dict(obj)
    else:  # a problem object (alignment.tasks.problems.Problem): read its documented fields
        try:
            row = {"id": obj.id, "prompt": obj.prompt, "kind": obj.kind, "answer": obj.answer, "tests": obj.tests}
        except AttributeError as e:
            raise ValueError(f"{where}: item {index} is a {type(obj).__name__}, not a prompt, row or problem ({e})") from None
        row["_problem"] = obj
    prompt = row.get("prompt")
    if not (isinstance(prompt, str) and prompt.strip()) and not _is_messages(prompt):
        raise ValueError(f"{where}: item {index} has no usable 'prompt' (a non-empty string or chat messages)")
    known = row.get("answer") is not None or row.get("tests") is not None
    if known and not row.get("kind"):
        raise ValueError(f"{where}: item {index} has an answer/tests but no 'kind' (which verifier to use)")
    if isinstance(prompt, str) and known:
        # a task (math/code with a verifier): worded as SFT, synth and eval word it (alignment/tasks/format.py)
        try:
            prompt = task_message(row["kind"], prompt)
        except ValueError as e:
            raise ValueError(f"{where}: item {index}: {e}") from None
    if isinstance(prompt, str) and chat:
        prompt = [{"role": "user", "content": prompt}]
    problem = None
    if known:
        problem = row.pop("_problem", None) or SimpleNamespace(**{k: v for k, v in row.items() if k != "_problem"})
    return PromptItem(id=str(row.get("id", index)), prompt=prompt, kind=row.get("kind") if known else None, problem=problem)


def load_prompts(cfg: PromptsConfig, ctx: StageContext) -> list[PromptItem]:
    """Read the prompt set from ``cfg.problems`` / ``cfg.path`` / the ``prompts`` input."""
    if cfg.problems and cfg.path is not None:
        raise ConfigError("prompts: set either 'problems' or 'path', not both")
    if cfg.problems:
        objs, where = training_problems(list(cfg.problems), "prompts.problems"), "prompts.problems"
    else:
        if cfg.path is not None:
            path = Path(cfg.path)
        elif "prompts" in ctx.inputs:
            path = ctx.input("prompts", cfg.input_key)
        else:
            raise ConfigError("prompts: set 'problems' or 'path', or give the stage an input named 'prompts'")
        if not path.is_file():
            raise MissingFileError(f"prompts: {path} is not a file (expected JSONL prompts)")
        objs, where = read_jsonl(path), str(path)
    try:
        items = [to_prompt_item(o, i, where, cfg.chat) for i, o in enumerate(objs)]
    except DataError:
        raise
    except (ValueError, TypeError) as e:  # a prompt row of the wrong shape: name it, no traceback
        raise DataError(str(e)) from None
    items = items[: cfg.limit] if cfg.limit is not None else items
    if not items:
        raise DataError(f"{where}: no prompts")
    return items


# --------------------------------------------------------------------------- candidates, scores, verdicts


def free_accelerator_memory() -> None:
    """Return cached blocks after a model is dropped, so the next model finds the GPU empty."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class VerifierPool:
    """One verifier per problem kind, built on first use from a factory (``kind -> verifier``)."""

    def __init__(self, factory: Callable[[str], Any]):
        self.factory = factory
        self.by_kind: dict[str, Any] = {}

    def __call__(self, item: PromptItem, response: str) -> bool | None:
        if item.problem is None:
            return None
        if item.kind not in self.by_kind:
            self.by_kind[item.kind] = self.factory(item.kind)
        verdict = self.by_kind[item.kind].verify(item.problem, response)
        # An infrastructure fault says nothing about the response: never train on it as "failed".
        return None if verdict.error_kind else bool(verdict.passed)


def generate_candidates(sampler: Sampler, items: Sequence[PromptItem], n: int, params: SamplingParams,
                        seeds: Sequence[int] | None = None):
    """``n`` samples per prompt, checked for shape (a backend returning fewer would skew the pairs).

    ``seeds`` (one per item, ``SamplingParams.seeds``): each prompt draws from its own stream, so its
    samples depend on nothing but the prompt and its seed, not on the prompts it shares the call with:
    N ranks sampling shards of a pool reproduce one process. The native backend keeps batching
    prompts; the others make one call per prompt.
    """
    if seeds is not None and len(seeds) != len(items):
        raise ValueError(f"{len(seeds)} seeds for {len(items)} prompts")
    if seeds is not None:
        params = replace(params, seeds=[int(s) for s in seeds])
    groups = sampler.generate([it.prompt for it in items], n, params)
    if len(groups) != len(items) or any(len(g) != n for g in groups):
        raise RuntimeError(f"sampler returned {[len(g) for g in groups]} samples for {len(items)} prompts x n={n}")
    return groups


def score_candidates(
    items: Sequence[PromptItem],
    groups: Sequence[Sequence[Sample]],
    make_scorer: Callable[[], Any],
    verify: Callable[[PromptItem, str], bool | None] | None,
) -> tuple[list[dict], dict[str, float]]:
    """Reward (and verdict) for every candidate; the scorer is built here and freed before returning."""
    t0 = time.perf_counter()
    scorer = make_scorer()
    flat_prompts = [it.prompt for it, g in zip(items, groups) for _ in g]
    rewards = scorer.score(flat_prompts, [s.text for g in groups for s in g])
    del scorer
    free_accelerator_memory()
    score_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, k = [], 0
    for it, group in tqdm(list(zip(items, groups)), desc="verify", disable=verify is None, leave=False):
        samples = []
        for s in group:
            passed = verify(it, s.text) if verify is not None else None
            samples.append({"text": s.text, "token_ids": list(s.token_ids), "reward": float(rewards[k]),
                            "passed": passed, "finish_reason": s.finish_reason, "logprob_sum": s.logprob_sum})
            k += 1
        rows.append({"id": it.id, "prompt": it.prompt, "kind": it.kind, "samples": samples})
    return rows, {"score_s": score_s, "verify_s": time.perf_counter() - t0}


def candidate_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """Reward and verifier statistics of a round's samples."""
    rewards = [s["reward"] for r in rows for s in r["samples"]]
    verdicts = [s["passed"] for r in rows for s in r["samples"] if s["passed"] is not None]
    best = [max(s["reward"] for s in r["samples"]) for r in rows]
    lengths = [len(s["token_ids"]) for r in rows for s in r["samples"]]
    return {
        "prompts": len(rows),
        "samples": len(rewards),
        "rm_score_mean": sum(rewards) / len(rewards),
        "rm_score_max": max(rewards),
        "rm_score_min": min(rewards),
        "rm_best_of_n_mean": sum(best) / len(best),
        "verified_samples": len(verdicts),
        "verifier_pass_rate": sum(verdicts) / len(verdicts) if verdicts else float("nan"),
        "sample_tokens_mean": sum(lengths) / len(lengths),
        "sample_truncated_frac": sum(s["finish_reason"] == "length" for r in rows for s in r["samples"]) / len(rewards),
    }


def select_frontier(
    sampler: Sampler,
    items: Sequence[PromptItem],
    spec: FrontierSpec,
    params: SamplingParams,
    verify: Callable[[PromptItem, str], bool | None] | None,
    shard: Shard = Shard(),
    prompt_seeds: bool = False,
) -> tuple[list[PromptItem], dict[str, float]]:
    """The pool's prompts whose probe pass rate lies in ``[min_pass, max_pass]`` (pool order, at most
    ``spec.prompts``); prompts without a verifier (no known answer) are kept as they are.

    On N ranks (``shard``) each rank probes its strided share of the pool and the pass rates are
    gathered, so every rank keeps the same prompts; ``prompt_seeds`` seeds each probed prompt from
    ``params.seed`` and its pool index (see :func:`generate_candidates`)."""
    if spec.probe_samples < 1 or not 0.0 <= spec.min_pass <= spec.max_pass <= 1.0:
        raise ConfigError(f"frontier: need probe_samples >= 1 and 0 <= min_pass <= max_pass <= 1, got {spec}")
    if verify is None:
        return list(items), {"frontier_pool": len(items), "frontier_kept": len(items)}
    mine = [i for i in shard.indices(len(items)) if items[i].problem is not None]
    seeds = [prompt_seed(params.seed, i) for i in mine] if prompt_seeds else None
    groups = generate_candidates(sampler, [items[i] for i in mine], spec.probe_samples, params, seeds) if mine else []
    local: list[tuple[int, float | None]] = [(i, None) for i in shard.indices(len(items))]
    for (i, group) in zip(mine, groups):
        verdicts = [v for v in (verify(items[i], s.text) for s in group) if v is not None]
        local[(i - shard.rank) // shard.world] = (i, sum(verdicts) / len(verdicts) if verdicts else None)
    rates = shard.gather_indexed(local, len(items))
    kept = [it for it, rate in zip(items, rates) if it.problem is None or rate is None
            or spec.min_pass <= rate <= spec.max_pass]
    if spec.prompts is not None:
        kept = kept[: spec.prompts]
    known = [r for it, r in zip(items, rates) if it.problem is not None and r is not None]
    return kept, {
        "frontier_pool": len(items),
        "frontier_kept": len(kept),
        "frontier_probe_pass_rate": sum(known) / len(known) if known else float("nan"),
        "frontier_all_solved": sum(r == 1.0 for r in known),
        "frontier_none_solved": sum(r == 0.0 for r in known),
    }
