"""Online DPO, the report's preference stage: per round, sample 16 responses per prompt from the
newest policy, score them with the reward model (and a verifier where the answer is known), pair
best vs worst, and train DPO; the round's policy samples, and is the reference of, the next round.

The stage entry (:func:`run`, ``_target_: alignment.train.online_dpo.run``) and its parts::

    config.py    OnlineDPOConfig, PromptsConfig, FrontierSpec: the schema of the recipe
    rollout.py   the prompt pool, sampling candidates, the frontier probe, scores and verdicts
    round.py     run_round (sample, score, pair, DPO, KL) and run_rounds (the loop, its resume)
    shard.py     N ranks: strided prompt shards, per-prompt seeds, gathering rows in pool order
    card.py      the data card of pairs.jsonl
    ../pair_rule.py   best vs worst per prompt (ties and gaps), shared with the reward model's curation

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

On N ranks (``stage.dpo_r1.accelerate=cpu_ddp stage.dpo_r1.num_processes=2``, or ``ddp`` on GPUs;
CPU-verified only): each rank samples, scores and verifies every N-th prompt (the frontier probe
too), each prompt seeded from the round's seed and its pool index; the rows are gathered to every
rank in pool order, every rank builds the same pairs, the DPO step runs under DDP, and rank 0 alone
writes ``candidates.jsonl``, ``pairs.jsonl``, ``shards.json`` (who sampled what) and the model
(shard.py; tests/multigpu/test_online_dpo_ranks.py).

Tests call :func:`run_rounds` with in-process factories instead (tests/train/test_dpo_online.py).

Run as a pipeline stage (recipes/stage/online_dpo.yaml, mounted as dpo_r1 and dpo_r2)::

    yialign stages=[dpo_r1,dpo_r2]

Outputs: ``model`` (the last round's policy), ``pairs`` (every round's pairs, JSONL with a
``round`` field), ``metrics``. Per round under ``round<k>/``: ``candidates.jsonl`` (every sample
with its reward and verdict), ``pairs.jsonl``, ``model/``, ``metrics.json`` (the round's commit
point: a resumed stage skips finished rounds and reuses a round's scored candidates).
"""

from __future__ import annotations

from alignment.safety import GuardConfig, GuardedSampler, SafetyFilter
from alignment.stage_contract import StageContext, StageResult
from alignment.train.online_dpo.config import FrontierSpec, OnlineDPOConfig, PromptsConfig
from alignment.train.online_dpo.rollout import (PromptItem, VerifierPool, free_accelerator_memory, load_prompts,
                                                select_frontier, to_prompt_item)
from alignment.train.online_dpo.round import run_round, run_rounds
from alignment.train.online_dpo.shard import Shard, prompt_seed

__all__ = ["FrontierSpec", "OnlineDPOConfig", "PromptItem", "PromptsConfig", "Shard", "free_accelerator_memory",
           "load_prompts", "prompt_seed", "run", "run_round", "run_rounds", "select_frontier", "to_prompt_item"]


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
        # term (an unsafe candidate is never chosen; see pair_rule.Candidate.unsafe)
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
