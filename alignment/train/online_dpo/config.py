"""The online DPO stage's schema (recipes/stage/online_dpo.yaml): the prompt pool, the frontier
probe, and the stage config. Field docs are here once; the recipe only sets values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignment.safety import SafetyConfig
from alignment.sampling import SamplerConfig
from alignment.tasks.problems import ProblemSpec
from alignment.train.dpo import DPOTrainArgs
from alignment.train.pair_rule import PairRule


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
            defaults to ``alignment.tasks.verify.get_verifier`` with ``check_steps`` (a right answer after
            a wrong arithmetic step is not passed); ``None`` = reward model only.
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
        prompt_seeds (`bool | None`, *optional*): sample each prompt from its own stream
            (``SamplingParams.seeds``), seeded from the round's seed and the prompt's index in the pool
            (online_dpo/shard.py). None = on under a launch of N > 1 ranks (where it is required: the
            samples then do not depend on N) and off in one process (one seeded stream for the call,
            as before); true in one process reproduces the samples of any N-rank run.
        safety (`SafetyConfig`, *optional*): RAISE switches (``${safety}``): with ``enabled``, the
            sampler is wrapped in input/output guards and guard-flagged candidates are never chosen.
    """

    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    frontier: FrontierSpec = field(default_factory=FrontierSpec)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scorer: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "reward.score.RewardScorer.from_pretrained", "batch_size": 32}
    )
    verifier: dict[str, Any] | None = field(
        default_factory=lambda: {"_target_": "alignment.tasks.verify.get_verifier", "check_steps": True})
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
    prompt_seeds: bool | None = None
    safety: SafetyConfig = field(default_factory=SafetyConfig)
