"""A scripted Sampler that replays problems' reference solutions with seeded mistakes.

It implements the ``Sampler`` protocol without a model, so the search, the stage and
their tests run in milliseconds and have a known ground truth: on a correct prefix, each
next step is the reference step with probability ``p_correct`` and otherwise a corrupted
copy (its last number changed, or for code a wrong ``return``); once a mistake is made
every later step and the final answer stay wrong. Correct steps get a higher
log-probability than corrupted ones, so the policy prior favours them as a trained model
would. Also used by ``yialign-synth policy=reference`` as a dry run of a recipe.

    from synth.search.scripted_sampler import ScriptedSampler
    sampler = ScriptedSampler(problems, p_correct=0.7)
"""

from __future__ import annotations

import re
from random import Random
from typing import Callable, Sequence

from alignment.sampling.base import Sample, SamplingParams
from alignment.tasks.format import plain_render
from alignment.tasks.problems import Problem
from synth.search.tree import separator

_LAST_NUM = re.compile(r"(-?\d+)(?!.*\d)", re.DOTALL)


def _corrupt(kind: str, step: str, rng: Random) -> str:
    if kind == "code":
        if "return " in step:
            return step.replace("return ", "return None if True else ", 1)
        return step + "\n    pass"
    m = _LAST_NUM.search(step)
    if m is None:
        return step + " (so the result is 1 more)"
    wrong = int(m.group(1)) + rng.choice([1, 2, 10])  # positive only: corrupting twice never restores it
    return step[: m.start()] + str(wrong) + step[m.end():]


class ScriptedSampler:
    """Sampler over known problems (each needs ``meta["reference"]``).

    Args:
        problems (`Sequence[Problem]`): the problems whose rendered prompts it will see.
        p_correct (`float`, *optional*, defaults to `0.7`): chance each step is right.
        render (`Callable`, *optional*): the same render function the search uses.
    """

    def __init__(self, problems: Sequence[Problem], p_correct: float = 0.7, render: Callable[[Problem], str] = plain_render):
        self.p_correct = p_correct
        self.by_prefix = {render(p): p for p in problems}
        self.calls = 0

    def _reference_steps(self, problem: Problem) -> list[str]:
        ref = problem.meta["reference"].strip("\n")
        return [s for s in ref.split(separator(problem.kind)) if s.strip()]

    def _lookup(self, prompt: str) -> tuple[Problem, str]:
        for prefix, problem in self.by_prefix.items():
            if prompt.startswith(prefix):
                return problem, prompt[len(prefix):]
        raise KeyError(f"ScriptedSampler: prompt of an unknown problem: {prompt[:80]!r}")

    def _one(self, problem: Problem, partial: str, stop: list[str], rng: Random) -> Sample:
        sep = separator(problem.kind)
        ref = self._reference_steps(problem)
        done = [s for s in partial.split(sep) if s.strip()] if partial else []
        on_track = done == ref[: len(done)]
        remaining = ref[len(done):] if on_track else [_corrupt(problem.kind, s, rng) for s in ref[len(done):]] or ["#### 0"]
        out, wrong = [], not on_track
        for step in remaining[: 1 if stop else None]:
            if wrong or rng.random() >= self.p_correct:
                wrong = True
                step = _corrupt(problem.kind, step, rng)
            out.append(step)
        text = sep.join(out)
        n_tok = len(text.split()) + 1
        logprob = -(2.0 if wrong else 0.5) * n_tok
        return Sample(text=text, token_ids=list(range(n_tok)), logprob_sum=logprob, finish_reason="stop")

    def generate(self, prompts, n: int, params: SamplingParams) -> list[list[Sample]]:
        self.calls += 1
        out = []
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError("ScriptedSampler takes rendered string prompts")
            problem, partial = self._lookup(prompt)
            row = []
            for i in range(n):
                rng = Random(f"{params.seed}:{problem.id}:{len(partial)}:{i}")
                row.append(self._one(problem, partial, params.stop, rng))
            out.append(row)
        return out
