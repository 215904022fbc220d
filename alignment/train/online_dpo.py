"""Online DPO, the report's preference stage: per round, sample 16 responses per prompt from the
newest policy, score them with the reward model (and a verifier where the answer is known), pair
best vs worst, and train DPO; the round's policy samples, and is the reference of, the next round.

One round, top to bottom (:func:`run_round`)::

    sampler(policy) -> n candidates per prompt          free the sampler
    scorer(rm)      -> reward per candidate             free the scorer
    verifier(kind)  -> passed / failed / unknown        (prompts with a known answer only)
    pairs.select_pair per prompt -> pairs.jsonl
    policy = load(policy); ref log-probs cached (TRL precompute); DPO; save -> round<k>/model

Only one model is on the accelerator at a time (sampler, then reward model, then the policy
being trained), and the reference is never resident: its log-probs over the pairs are computed
once by the policy before its first step (alignment.train.dpo).

How the stage reaches the reward model, verifiers and problems without importing ``reward`` or
``synth`` (``alignment`` must not depend on them): the recipe names factories by ``_target_``
and the runner instantiates them with hydra, adding the arguments only it knows:

- ``scorer``: ``instantiate(cfg.scorer, <reward model dir>, device=<device>)`` must return an
  object with ``score(prompts, responses) -> list[float]`` (``reward.score.RewardScorer.from_pretrained``).
- ``verifier``: ``instantiate(cfg.verifier, <kind>)`` must return an object with
  ``verify(problem, response)`` returning a verdict with ``passed`` and ``error_kind``
  (``alignment.tasks.verify.get_verifier``); an ``error_kind`` (e.g. a sandbox fault) counts as unknown, not failed.
- ``prompts.problems``: task problems (``alignment.tasks.problems``: ``[{source: templates, n: 512}]``,
  train splits only), asked in the one task format. ``prompts.path`` (or a stage input named
  ``prompts``) reads rows ``{"prompt", "id"?, "kind"?, "answer"?, "tests"?, "entry_point"?}`` from JSONL.

Frontier prompts (``frontier.enabled``): before a round samples its ``n_samples``, a probe of
``frontier.probe_samples`` samples per prompt of the pool measures the policy's pass rate, and only
prompts whose rate lies in ``[min_pass, max_pass]`` go on (at most ``frontier.prompts``): a prompt the
policy always solves or never solves gives no verifier pair, so the round's samples go where the
policy can still learn.

Tests call :func:`run_rounds` with in-process factories instead (tests/train/test_dpo_online.py).

Run as a pipeline stage (recipes/stage/online_dpo.yaml, mounted as dpo_r1 and dpo_r2)::

    yialign stages=[dpo_r1,dpo_r2]

Outputs: ``model`` (the last round's policy), ``pairs`` (every round's pairs, JSONL with a
``round`` field), ``metrics``. Per round under ``round<k>/``: ``candidates.jsonl`` (every sample
with its reward and verdict), ``pairs.jsonl``, ``model/``, ``metrics.json`` (the round's commit
point: a resumed stage skips finished rounds and reuses a round's scored candidates).
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from alignment.artifacts import atomic_replace_dir, atomic_write_json, atomic_write_jsonl, drop_timings, read_jsonl
from alignment.errors import ConfigError, DataError, MissingFileError
from alignment.safety import GuardConfig, GuardedSampler, SafetyConfig, SafetyFilter
from alignment.sampling import Prompt, Sample, Sampler, SamplerConfig, SamplingParams, close_sampler
from alignment.sampling.text import encode_prompts
from alignment.stage import StageContext, StageResult
from alignment.tasks.format import task_message
from alignment.tasks.problems import ProblemSpec, training_problems
from alignment.train.dpo import DPOTrainArgs, load_policy, train_dpo
from alignment.train.losses import dpo_implicit_rewards, dpo_loss, sequence_logprobs
from alignment.train.pairs import Candidate, Drop, PairRule, PairStats, select_pair

# --------------------------------------------------------------------------- config


@dataclass
class PromptsConfig:
    """Where a round's prompts come from: ``problems``, ``path``, or the stage input ``prompts``.

    Args:
        problems (`list[ProblemSpec]`, *optional*): task problems, e.g. ``[{source: templates, n: 512},
            {source: gsm_symbolic, n: 256}]`` (train splits only; alignment.tasks.problems).
        path (`str | None`, *optional*): a JSONL file, one ``{"prompt": ..., "id"?, "kind"?,
            "answer"?, "tests"?, "entry_point"?}`` per line.
        input_key (`str | None`, *optional*): output of the ``prompts`` input stage to read (when
            neither ``problems`` nor ``path`` is set).
        limit (`int | None`, *optional*): keep the first this many prompts.
        chat (`bool`, *optional*, defaults to `True`): send string prompts as one user message
            (through the chat template), as the SFT policies were trained.
    """

    problems: list[ProblemSpec] = field(default_factory=list)
    path: str | None = None
    input_key: str | None = None
    limit: int | None = None
    chat: bool = True


@dataclass
class FrontierSpec:
    """Keep the prompts at the policy's frontier (see the module docstring).

    Args:
        enabled (`bool`, *optional*, defaults to `False`): probe and select; off samples every prompt.
        probe_samples (`int`, *optional*, defaults to `4`): samples per pool prompt for the pass rate.
        min_pass (`float`, *optional*, defaults to `0.1`): lowest pass rate kept.
        max_pass (`float`, *optional*, defaults to `0.9`): highest pass rate kept.
        prompts (`int | None`, *optional*): keep at most this many (pool order); None = all that qualify.
        max_new_tokens (`int | None`, *optional*): probe sample length; None = the round's.
    """

    enabled: bool = False
    probe_samples: int = 4
    min_pass: float = 0.1
    max_pass: float = 0.9
    prompts: int | None = None
    max_new_tokens: int | None = None


@dataclass
class OnlineDPOConfig:
    """Schema of recipes/stage/online_dpo.yaml. Inputs: ``policy`` (model), ``reward`` (RM model).

    Args:
        prompts (`PromptsConfig`): the prompt pool (the same pool every round).
        frontier (`FrontierSpec`, *optional*): per round, keep the pool's prompts at the policy's frontier.
        sampler (`SamplerConfig`, *optional*): the ``sampler`` group (``${sampler}``).
        scorer (`dict`, *optional*): ``_target_`` building the reward scorer; called with the reward
            model folder and ``device=``. Defaults to ``reward.score.RewardScorer.from_pretrained``.
        verifier (`dict | None`, *optional*): ``_target_`` building a verifier from a problem kind;
            defaults to ``alignment.tasks.verify.get_verifier``; ``None`` = reward model only.
        rounds (`int`, *optional*, defaults to `1`): rounds in this stage (the report mounts the
            stage twice, one round each).
        n_samples (`int`, *optional*, defaults to `16`): candidates per prompt (the report's 16).
        max_new_tokens (`int`, *optional*, defaults to `1024`): per candidate.
        temperature (`float`, *optional*, defaults to `1.0`): sampling temperature.
        top_p (`float`, *optional*, defaults to `1.0`): nucleus mass.
        stop (`list[str]`, *optional*): stop strings.
        pairs (`PairRule`, *optional*): best vs worst/random, ``min_gap``, verifier combination.
        train (`DPOTrainArgs`, *optional*): the DPO step.
        kl_samples (`int`, *optional*, defaults to `256`): sampled candidates used for the KL estimate
            (0 = skip it); also caps the pairs re-scored for the post-round DPO metrics.
        logprob_batch_size (`int`, *optional*, defaults to `16`): sequences per forward for the KL
            estimate.
        seed (`int | None`, *optional*): sampling/pairing seed; the recipe's seed when None.
        safety (`SafetyConfig`, *optional*): RAISE switches (``${safety}``): with ``enabled``, the
            sampler is wrapped in input/output guards and guard-flagged candidates are never chosen.
    """

    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    frontier: FrontierSpec = field(default_factory=FrontierSpec)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scorer: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "reward.score.RewardScorer.from_pretrained", "batch_size": 32}
    )
    verifier: dict[str, Any] | None = field(default_factory=lambda: {"_target_": "alignment.tasks.verify.get_verifier"})
    rounds: int = 1
    n_samples: int = 16
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    pairs: PairRule = field(default_factory=PairRule)
    train: DPOTrainArgs = field(default_factory=DPOTrainArgs)
    kl_samples: int = 256
    logprob_batch_size: int = 16
    seed: int | None = None
    safety: SafetyConfig = field(default_factory=SafetyConfig)


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


# --------------------------------------------------------------------------- feedback


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


def generate_candidates(sampler: Sampler, items: Sequence[PromptItem], n: int, params: SamplingParams):
    """``n`` samples per prompt, checked for shape (a backend returning fewer would skew the pairs)."""
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


def build_pairs(rows: Sequence[dict], rule: PairRule, seed: int, round_idx: int) -> tuple[list[dict], PairStats]:
    """Apply the pair rule to every prompt's candidates; return pair rows (JSONL-ready) and counts."""
    rng = random.Random(seed)
    stats, out = PairStats(), []
    for r in rows:
        cands = [Candidate(s["text"], s["reward"], s["passed"], s.get("unsafe", False)) for s in r["samples"]]
        result = select_pair(cands, rule, rng)
        stats.add(result)
        if isinstance(result, Drop):
            continue
        c, j = r["samples"][result.chosen], r["samples"][result.rejected]
        out.append({
            "prompt": r["prompt"], "chosen": c["text"], "rejected": j["text"],
            "id": r["id"], "round": round_idx, "why": result.why, "margin": result.margin,
            "chosen_reward": c["reward"], "rejected_reward": j["reward"],
            "chosen_passed": c["passed"], "rejected_passed": j["passed"],
            "chosen_index": result.chosen, "rejected_index": result.rejected,
        })
    return out, stats


def select_frontier(
    sampler: Sampler,
    items: Sequence[PromptItem],
    spec: FrontierSpec,
    params: SamplingParams,
    verify: Callable[[PromptItem, str], bool | None] | None,
) -> tuple[list[PromptItem], dict[str, float]]:
    """The pool's prompts whose probe pass rate lies in ``[min_pass, max_pass]`` (pool order, at most
    ``spec.prompts``); prompts without a verifier (no known answer) are kept as they are."""
    if spec.probe_samples < 1 or not 0.0 <= spec.min_pass <= spec.max_pass <= 1.0:
        raise ConfigError(f"frontier: need probe_samples >= 1 and 0 <= min_pass <= max_pass <= 1, got {spec}")
    if verify is None:
        return list(items), {"frontier_pool": len(items), "frontier_kept": len(items)}
    probed = [it for it in items if it.problem is not None]
    groups = generate_candidates(sampler, probed, spec.probe_samples, params) if probed else []
    rates: dict[int, float | None] = {}
    for it, group in zip(probed, groups):
        verdicts = [v for v in (verify(it, s.text) for s in group) if v is not None]
        rates[id(it)] = sum(verdicts) / len(verdicts) if verdicts else None
    kept = [it for it in items if it.problem is None or rates[id(it)] is None
            or spec.min_pass <= rates[id(it)] <= spec.max_pass]
    if spec.prompts is not None:
        kept = kept[: spec.prompts]
    known = [r for r in rates.values() if r is not None]
    return kept, {
        "frontier_pool": len(items),
        "frontier_kept": len(kept),
        "frontier_probe_pass_rate": sum(known) / len(known) if known else float("nan"),
        "frontier_all_solved": sum(r == 1.0 for r in known),
        "frontier_none_solved": sum(r == 0.0 for r in known),
    }


# --------------------------------------------------------------------------- KL estimate


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: Sequence[Prompt], completions: Sequence[Sequence[int]],
                        batch_size: int) -> torch.Tensor:
    """Sum of log pi(completion | prompt) for each pair, with the prompt rendered as the sampler does."""
    device = next(model.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [p + list(c) for p, c in zip(prompt_ids[start:start + batch_size], completions[start:start + batch_size])]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (p, s) in enumerate(zip(prompt_ids[start:], seqs)):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
            labels[row, len(p):len(s)] = ids[row, len(p):len(s)]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        out.append(sequence_logprobs(logits[:, :-1], labels[:, 1:].to(device)).cpu())
    model.train(was_training)
    return torch.cat(out)


def kl_metrics(ref_logps: torch.Tensor, policy_logps: torch.Tensor) -> dict[str, float]:
    """KL(ref || policy) estimated on samples drawn from the reference (this round's candidates).

    ``k1`` = mean(log ref - log pi) is unbiased; ``k3`` = mean(r - 1 - log r), r = pi/ref, is
    unbiased too, never negative and has lower variance (Schulman, "Approximating KL divergence").
    """
    log_r = (policy_logps - ref_logps).double()
    return {
        "kl_ref_k1": float((-log_r).mean()),
        "kl_ref_k3": float((log_r.clamp(max=50).exp() - 1 - log_r).mean()),
    }


def post_round_dpo_metrics(ref_logps: torch.Tensor, policy_logps: torch.Tensor, n_pairs: int, beta: float) -> dict:
    """DPO implicit-reward accuracy, margin and loss of the trained policy on the round's pairs.

    TRL's logged values are taken before each step's update (step 1 always shows 0), so with the
    few steps of a round they say little; these are measured after the round. Inputs hold the
    chosen log-probs of ``n_pairs`` pairs, then their rejected log-probs.
    """
    if n_pairs == 0:
        return {}
    pc, pr = policy_logps[:n_pairs], policy_logps[n_pairs:]
    rc, rr = ref_logps[:n_pairs], ref_logps[n_pairs:]
    chosen, rejected = dpo_implicit_rewards(pc, rc, beta), dpo_implicit_rewards(pr, rr, beta)
    return {
        "dpo_post_reward_accuracy": float((chosen > rejected).float().mean()),
        "dpo_post_reward_margin": float((chosen - rejected).mean()),
        "dpo_post_loss": float(dpo_loss(pc, pr, rc, rr, beta)),
    }


# --------------------------------------------------------------------------- rounds

HEADLINE = ("pairs", "rm_score_mean", "rm_score_max", "verifier_pass_rate", "dpo_post_reward_accuracy",
            "dpo_post_reward_margin", "kl_ref_k3", "round_s")


def _round_seed(seed: int, stage: str, round_idx: int) -> int:
    """Distinct per stage and round: dpo_r2 must not redraw dpo_r1's samples if the policy did not move."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode()) + round_idx) % 2**31


def run_round(
    cfg: OnlineDPOConfig,
    ctx: StageContext,
    round_idx: int,
    policy_dir: Path,
    items: Sequence[PromptItem],
    make_sampler: Callable[[Path], Sampler],
    make_scorer: Callable[[], Any],
    verify: Callable[[PromptItem, str], bool | None] | None,
    seed: int,
) -> tuple[dict, list[dict], Path]:
    """One round: returns (metrics, pair rows, the new policy folder)."""
    rdir = ctx.stage_dir / f"round{round_idx}"
    rdir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"round": round_idx, "policy_in": str(policy_dir)}

    # ---- sample + score (reused when a crashed round is resumed)
    cand_file = rdir / "candidates.jsonl"
    if cand_file.is_file():
        rows = read_jsonl(cand_file, max_bytes=0)  # our own file: its rows hold every sample of a prompt
    else:
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                stop=list(cfg.stop), seed=_round_seed(seed, ctx.name, round_idx))
        t0 = time.perf_counter()
        sampler = make_sampler(policy_dir)
        if cfg.frontier.enabled:
            probe = SamplingParams(max_new_tokens=cfg.frontier.max_new_tokens or cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_p=cfg.top_p, stop=list(cfg.stop), seed=params.seed + 1)
            items, frontier = select_frontier(sampler, items, cfg.frontier, probe, verify)
            metrics.update(frontier)
            metrics["probe_s"] = time.perf_counter() - t0
            if not items:
                raise DataError(f"round {round_idx}: no prompt of the pool is on the policy's frontier "
                                f"(pass rate in [{cfg.frontier.min_pass}, {cfg.frontier.max_pass}]): {frontier}")
        groups = generate_candidates(sampler, items, cfg.n_samples, params)
        if isinstance(sampler, GuardedSampler):  # safety.enabled: keep the guard events
            metrics["guard_events"] = len(sampler.events)
            metrics.update(sampler.summary())
            sampler.write_log(rdir / "guard_events.jsonl")
        # Drop the sampler (and the policy copy it holds) before the reward model loads; close() frees
        # a vLLM engine now (garbage collection may come after the next model is on the card).
        close_sampler(sampler)
        del sampler
        free_accelerator_memory()
        metrics["sample_s"] = time.perf_counter() - t0
        rows, timings = score_candidates(items, groups, make_scorer, verify)
        if cfg.safety.enabled:
            flt = SafetyFilter(cfg.safety)
            for r in rows:
                for smp in r["samples"]:
                    smp["unsafe"] = bool(flt.check(smp["text"])) or smp["finish_reason"] == "guard"
            metrics["unsafe_samples"] = sum(smp["unsafe"] for r in rows for smp in r["samples"])
        metrics.update(timings)
        atomic_write_jsonl(cand_file, rows)
    metrics.update(candidate_metrics(rows))

    # ---- pairs
    pairs, stats = build_pairs(rows, cfg.pairs, _round_seed(seed, ctx.name, round_idx), round_idx)
    metrics.update(stats.as_metrics())
    if "frontier_pool" in metrics:  # the share of the whole pool, probe included, that gave a pair
        metrics["pairs_per_pool_prompt"] = metrics["pairs"] / max(metrics["frontier_pool"], 1)
    atomic_write_jsonl(rdir / "pairs.jsonl", pairs)

    # ---- DPO (the policy is loaded only now: the sampler and the scorer are gone)
    out_dir = rdir / "model"
    if not pairs:
        # Nothing to learn from (all ties / all failed): the policy carries over unchanged.
        tmp = rdir / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(policy_dir, tmp)
        atomic_replace_dir(tmp, out_dir)
        metrics["dpo_skipped"] = 1
        return metrics, pairs, out_dir
    model, tokenizer = load_policy(policy_dir, ctx.device, cfg.train.model_dtype)
    # Sequences scored before and after training (exact sampled tokens): candidates for the KL
    # estimate, then each pair's chosen and rejected for the post-round DPO metrics.
    by_id = {r["id"]: r for r in rows}
    kl_seqs = [(r["prompt"], s["token_ids"]) for r in rows for s in r["samples"]][: cfg.kl_samples]
    eval_pairs = pairs[: cfg.kl_samples]
    seqs = kl_seqs + [(p["prompt"], by_id[p["id"]]["samples"][p[side]]["token_ids"])
                      for side in ("chosen_index", "rejected_index") for p in eval_pairs]
    score_seqs = lambda: completion_logprobs(model, tokenizer, [p for p, _ in seqs], [c for _, c in seqs],  # noqa: E731
                                             cfg.logprob_batch_size) if seqs else torch.zeros(0)
    ref_logps = score_seqs()

    from alignment.checkpoints import last_good_checkpoint

    ckpt_dir = ctx.checkpoint_dir / f"round{round_idx}"
    resume = last_good_checkpoint(ckpt_dir)
    metrics.update(train_dpo(model, tokenizer, pairs, cfg.train, ckpt_dir, device=ctx.device,
                             seed=_round_seed(seed, ctx.name, round_idx), resume_from=resume))
    policy_logps = score_seqs()
    n_kl, n_pairs = len(kl_seqs), len(eval_pairs)
    if n_kl:
        metrics.update(kl_metrics(ref_logps[:n_kl], policy_logps[:n_kl]))
    metrics.update(post_round_dpo_metrics(ref_logps[n_kl:], policy_logps[n_kl:], n_pairs, cfg.train.beta))
    tmp = rdir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_replace_dir(tmp, out_dir)
    del model
    free_accelerator_memory()
    return metrics, pairs, out_dir


def run_rounds(
    cfg: OnlineDPOConfig,
    ctx: StageContext,
    policy_dir: str | Path,
    items: Sequence[PromptItem],
    make_sampler: Callable[[Path], Sampler],
    make_scorer: Callable[[], Any],
    verify: Callable[[PromptItem, str], bool | None] | None,
) -> StageResult:
    """The online loop over ``cfg.rounds`` rounds with the given factories (what :func:`run` wires up)."""
    if cfg.rounds < 1 or cfg.n_samples < 2:
        raise ConfigError(f"online DPO needs rounds >= 1 and n_samples >= 2, got {cfg.rounds} and {cfg.n_samples}")
    seed = ctx.seed if cfg.seed is None else cfg.seed
    policy_dir = Path(policy_dir)
    all_pairs, per_round = [], []
    for k in range(1, cfg.rounds + 1):
        rdir = ctx.stage_dir / f"round{k}"
        done = rdir / "metrics.json"
        if done.is_file() and (rdir / "model" / "config.json").is_file():
            per_round.append(json.loads(done.read_text(encoding="utf-8")))
            all_pairs.extend(read_jsonl(rdir / "pairs.jsonl", max_bytes=0))
            policy_dir = rdir / "model"
            continue
        started = time.perf_counter()
        metrics, pairs, policy_dir = run_round(cfg, ctx, k, policy_dir, items, make_sampler, make_scorer, verify, seed)
        metrics["round_s"] = round(time.perf_counter() - started, 3)
        atomic_write_json(done, metrics)  # the round's commit point
        # Its trainer checkpoints (and reference cache) only served a resume of this round.
        shutil.rmtree(ctx.checkpoint_dir / f"round{k}", ignore_errors=True)
        per_round.append(metrics)
        all_pairs.extend(pairs)
        print(f"[{ctx.name}] round {k}: {metrics['pairs']} pairs from {metrics['prompts']} prompts, "
              f"rm mean {metrics['rm_score_mean']:.3f}, dpo acc {metrics.get('dpo_post_reward_accuracy', float('nan')):.2f}, "
              f"{metrics['round_s']:.1f}s")

    atomic_write_jsonl(ctx.stage_dir / "pairs.jsonl", all_pairs)
    write_pairs_card(ctx, cfg, per_round, seed)
    # Headline numbers first: the pipeline's stage table shows the first few.
    last = per_round[-1]
    flat = {k: last[k] for k in HEADLINE if k in last}
    flat.update({k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "round" and k not in flat})
    if cfg.rounds > 1:
        for m in per_round:
            flat.update({f"r{m['round']}/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k != "round"})
    flat["rounds"] = cfg.rounds
    # no wall times in the published file: its hash is part of the next stage's input hash
    atomic_write_json(ctx.stage_dir / "metrics.json", {"config": asdict(cfg), "rounds": drop_timings(per_round)})
    outputs = {"model": str(policy_dir.relative_to(ctx.stage_dir)), "pairs": "pairs.jsonl",
               "pairs_card": "pairs.card.md", "metrics": "metrics.json"}
    return StageResult(outputs=outputs, metrics=flat)


def write_pairs_card(ctx: StageContext, cfg: OnlineDPOConfig, per_round: Sequence[dict], seed: int) -> Path:
    """The data card of ``pairs.jsonl`` (template: data_cards/dpo_online_pairs.md)."""
    from alignment.artifacts import atomic_write_text, file_hash, git_commit
    from alignment.data.cards import render_card

    pairs_path = ctx.stage_dir / "pairs.jsonl"
    header = {
        "name": f"{ctx.name}_pairs",
        "kind": "dataset",
        "description": f"Online DPO preference pairs written by stage {ctx.name}: best vs worst of "
                       f"{cfg.n_samples} samples per prompt, ranked by the reward model and verifiers.",
        "sources": [{"name": f"round{m['round']}", "count": int(m["pairs"])} for m in per_round],
        "fields": ["prompt", "chosen", "rejected", "id", "round", "why", "margin", "chosen_reward", "rejected_reward",
                   "chosen_passed", "rejected_passed", "chosen_index", "rejected_index"],
        "license": "model outputs of the run's own policy; prompts keep their source's license (see body)",
        "seed": seed,
        "hashes": {"pairs.jsonl": file_hash(pairs_path)},
        "records": sum(int(m["pairs"]) for m in per_round),
        "stage": ctx.name,
    }
    keys = ("prompts", "samples", "pairs", "dropped_tie", "dropped_small_gap", "dropped_all_failed",
            "rm_score_mean", "verifier_pass_rate", "pair_margin_mean")
    summary = json.dumps([{k: m.get(k) for k in ("round", *keys)} for m in per_round], indent=1)
    body = f"""# {ctx.name} online DPO pairs (generated)

- generator: `alignment.train.online_dpo`, repository commit `{git_commit()}`
- policy sampled: `{per_round[0]['policy_in']}` (round 1; each later round samples the previous round's model)
- sampling: {cfg.sampler.backend} backend, n={cfg.n_samples}, temperature {cfg.temperature}, top_p {cfg.top_p},
  max_new_tokens {cfg.max_new_tokens}
- prompts: `{json.dumps([asdict(p) if isinstance(p, ProblemSpec) else dict(p) for p in cfg.prompts.problems]) if cfg.prompts.problems else cfg.prompts.path or 'input prompts'}`
- frontier: `{json.dumps(asdict(cfg.frontier))}`
- scorer: `{json.dumps(cfg.scorer)}`; verifier: `{json.dumps(cfg.verifier)}`
- pair rule: `{json.dumps(asdict(cfg.pairs))}` (ties always dropped)

Chosen and rejected are model outputs: they inherit the policy checkpoint's terms and those of its
training data; pairs are only as good as the reward model that ranked them (inspect it with
`yialign-reward inspect`).

## Counts per round
```json
{summary}
```
"""
    return atomic_write_text(ctx.stage_dir / "pairs.card.md", render_card(header, body))


# --------------------------------------------------------------------------- stage


def run(cfg: OnlineDPOConfig, ctx: StageContext) -> StageResult:
    """Stage runner: inputs ``policy`` (model) and ``reward`` (RM model); optional ``prompts``."""
    from hydra.utils import instantiate

    from alignment.sampling import build_sampler

    policy_dir = ctx.input("policy", "model")
    rm_dir = ctx.input("reward", "model")
    items = load_prompts(cfg.prompts, ctx)
    make_sampler = lambda path: build_sampler(cfg.sampler, str(path), device=ctx.device)  # noqa: E731
    if cfg.safety.enabled:
        # RAISE at sampling time: guards around the sampler, and the guard verdict as a reward
        # term (an unsafe candidate is never chosen; see pairs.Candidate.unsafe)
        flt = SafetyFilter(cfg.safety)
        guard_cfg = GuardConfig(input_action=cfg.safety.guard_input, output_action=cfg.safety.guard_output)
        make_sampler = lambda path: GuardedSampler(build_sampler(cfg.sampler, str(path), device=ctx.device), guard_cfg, flt)  # noqa: E731
    verify = None
    if cfg.verifier is not None and any(it.problem is not None for it in items):
        verify = VerifierPool(lambda kind: instantiate(cfg.verifier, kind))
    return run_rounds(
        cfg, ctx, policy_dir, items,
        make_sampler=make_sampler,
        make_scorer=lambda: instantiate(cfg.scorer, str(rm_dir), device=ctx.device),
        verify=verify,
    )
