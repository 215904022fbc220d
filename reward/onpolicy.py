"""On-policy preference pairs for the reward model: the policy's own answers, judged by a verifier.

The online-DPO rounds ask the reward model to rank the policy's samples, so it must have seen them:
pairs of reference solutions against perturbed numbers (reward/pairs.py ``problems:``) teach it
what a wrong final number looks like, not what the policy's mistakes look like. Here the stage's
``policy`` input samples ``n_samples`` answers per training problem (the one task format,
alignment/tasks/format.py), the verifier judges each, and every prompt with both a correct and an
incorrect answer gives up to ``pairs_per_prompt`` pairs (distinct correct answers against distinct
incorrect ones first, then the other combinations; chosen score 1, rejected 0). The rows are the source named ``onpolicy`` in a phase's
``sources``, and its own held-out pairwise accuracy is reported (``pairwise_acc/onpolicy``).

    onpolicy:
      enabled: true
      problems: [{source: templates, n: 512}]
      n_samples: 8
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.artifacts import atomic_write_jsonl, read_jsonl
from alignment.tasks.format import user_message
from alignment.tasks.problems import ProblemSpec, training_problems

SOURCE = "onpolicy"


@dataclass
class OnPolicySpec:
    """The reward stage's on-policy pairs (``stage.reward.onpolicy``).

    Args:
        enabled (`bool`, *optional*, defaults to `False`): sample, verify and pair.
        problems (`list[ProblemSpec]`, *optional*): training problems to answer (train splits only).
        n_samples (`int`, *optional*, defaults to `8`): answers per problem.
        pairs_per_prompt (`int`, *optional*, defaults to `2`): most pairs one prompt gives.
        max_new_tokens (`int`, *optional*, defaults to `256`): per answer.
        temperature (`float`, *optional*, defaults to `1.0`): sampling temperature.
        check_steps (`bool`, *optional*, defaults to `True`): a right answer after a wrong arithmetic step
            counts as wrong (``MathVerifier(check_steps=True)``): the RM learns to prefer sound work.
        sampler (`dict`, *optional*): the ``sampler`` group (``${sampler}``).
        seed (`int`, *optional*, defaults to `0`): sampling and pairing seed.
    """

    enabled: bool = False
    problems: list[ProblemSpec] = field(default_factory=list)
    n_samples: int = 8
    pairs_per_prompt: int = 2
    max_new_tokens: int = 256
    temperature: float = 1.0
    check_steps: bool = True
    sampler: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


def pair_verified(prompt: str, answers: list[tuple[str, bool]], k: int, rng: random.Random) -> list[dict]:
    """Up to ``k`` pairs of a correct vs an incorrect answer of one prompt: first pairs that share no
    answer (distinct correct against distinct incorrect ones), then the other (correct, incorrect)
    combinations in random order; never the same pair twice."""
    good = list(dict.fromkeys(t for t, ok in answers if ok))
    bad = list(dict.fromkeys(t for t, ok in answers if not ok))
    rng.shuffle(good)
    rng.shuffle(bad)
    first = list(zip(good, bad))
    taken = set(first)
    rest = [(c, r) for c in good for r in bad if (c, r) not in taken]
    rng.shuffle(rest)
    return [{"prompt": prompt, "chosen": c, "rejected": r, "chosen_score": 1.0, "rejected_score": 0.0, "source": SOURCE}
            for c, r in (first + rest)[:k]]


def onpolicy_pairs(spec: OnPolicySpec, policy_dir: str | Path, device: str, cache: Path) -> tuple[list[dict], dict[str, float]]:
    """Sample, verify and pair (module docstring); the rows are cached in ``cache`` (a resumed stage
    reuses them). Returns (pairs, metrics)."""
    if cache.is_file():
        rows = read_jsonl(cache)
        return rows, {"onpolicy_pairs": len(rows)}
    from alignment.sampling import SamplingParams, build_sampler, close_sampler
    from alignment.tasks.verify import shared_verifier
    from alignment.tasks.verify.math import WRONG_STEP
    from alignment.train.online_dpo.rollout import free_accelerator_memory

    t0 = time.perf_counter()
    problems = training_problems(list(spec.problems), "onpolicy.problems")
    sampler = build_sampler(spec.sampler, str(policy_dir), device=device)
    prompts = [[{"role": "user", "content": user_message(p)}] for p in problems]
    params = SamplingParams(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, seed=spec.seed)
    try:
        groups = sampler.generate(prompts, spec.n_samples, params)
    finally:
        close_sampler(sampler)  # the reward model trains on this card next
    del sampler
    free_accelerator_memory()
    sample_s = time.perf_counter() - t0
    rng = random.Random(spec.seed)
    rows, solved, judged, passed, wrong_step = [], 0, 0, 0, 0
    for p, group in zip(problems, groups):
        answers = []
        for s in group:
            v = shared_verifier(p.kind, spec.check_steps).verify(p, s.text)
            if v.error_kind is None:
                answers.append((s.text, bool(v.passed)))
                wrong_step += v.detail.startswith(WRONG_STEP)
        judged += len(answers)
        passed += sum(ok for _, ok in answers)
        solved += any(ok for _, ok in answers)
        rows.extend(pair_verified(user_message(p), answers, spec.pairs_per_prompt, rng))
    atomic_write_jsonl(cache, rows)
    return rows, {"onpolicy_problems": len(problems), "onpolicy_pass_rate": passed / judged if judged else 0.0,
                  "onpolicy_solved": solved, "onpolicy_pairs": len(rows), "onpolicy_wrong_step_answers": wrong_step,
                  "onpolicy_prompts_with_pairs": len({r["prompt"] for r in rows}),
                  "onpolicy_s": round(time.perf_counter() - t0, 2), "onpolicy_sample_s": round(sample_s, 2)}
