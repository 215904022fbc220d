"""Verifiers: decide whether a response solves a problem.

    from alignment.tasks.verify import get_verifier, Verdict
    verdict = get_verifier("math").verify(problem, response)   # or "code"

``Verdict.passed`` is the accept decision; ``score`` is in [0, 1]; ``detail`` says why in one
line; ``error_kind`` is None when the verdict is about the response, or names an
infrastructure fault (e.g. ``"infra"``: the sandbox itself failed) that must not be read as
"the response is wrong". Verifiers are total: malformed or hostile responses give a
failing verdict, never an exception.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one response.

    Args:
        passed (`bool`): the response is accepted.
        score (`float`): reward in [0, 1] (1.0 when passed).
        detail (`str`): a short human-readable reason (``"ok"``, ``"wrong: got 3, want 4"``,
            ``"timeout: 5.0s wall"``).
        error_kind (`str | None`, *optional*, defaults to `None`): ``None`` when the verdict
            judges the response; ``"infra"`` when the verifier could not judge it (sandbox
            failed to start, harness crashed before the candidate ran). Callers must not
            train on or score such verdicts as failures.
        formatted (`bool`, *optional*, defaults to `True`): the response has the required form (a
            final answer the math verifier can find and parse; a code block that parses and defines
            the entry point), whether or not it is right. Format compliance is the eval metric
            that a small model moves first.
    """

    passed: bool
    score: float
    detail: str
    error_kind: str | None = None
    formatted: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "score": self.score, "detail": self.detail, "error_kind": self.error_kind,
                "formatted": self.formatted}


def get_verifier(kind: str, *, check_steps: bool = False, **kwargs: Any):
    """Return the verifier for problems of ``kind`` (``"math"`` or ``"code"``).

    ``kwargs`` go to the verifier's constructor (``timeout_s=``: wall seconds per run for code,
    CPU seconds per answer for math). ``check_steps``: a math answer must also state no wrong
    arithmetic on its way (``MathVerifier``'s ``check_steps``; what training data asks); code is
    judged by its tests either way.
    """
    if kind == "math":
        from alignment.tasks.verify.math import MathVerifier

        return MathVerifier(check_steps=check_steps, **kwargs)
    if kind == "code":
        from alignment.tasks.verify.code import CodeVerifier

        return CodeVerifier(**kwargs)
    raise ValueError(f"unknown verifier kind {kind!r}; expected 'math' or 'code'")


@functools.lru_cache(maxsize=None)
def shared_verifier(kind: str, check_steps: bool = False):
    """One verifier per kind (and ``check_steps``) with default settings, built on first use and reused
    (the math verifier keeps a cache of parsed gold answers; neither holds per-problem state)."""
    return get_verifier(kind, check_steps=check_steps)


def record_pass_rate(record: dict, responses: list[str]) -> float | None:
    """Share of ``responses`` a verifier accepts for a chat record carrying ``task`` (``kind``,
    ``answer``; code: ``tests``, ``entry_point``), as the ``builtin:task_*`` sources write; None for a
    record without one (chat, safety). The pass-rate hook of sft_hard's hard selection
    (``hard.pass_rate_fn: alignment.tasks.verify.record_pass_rate``). Infrastructure faults are
    left out of the share; all of them gives None."""
    from alignment.tasks.problems import Problem

    task = record.get("task")
    if not task or not responses:
        return None
    prompt = record["messages"][-2]["content"] if len(record.get("messages", [])) >= 2 else ""
    problem = Problem(id=task.get("problem_id", record.get("id")), kind=task.get("kind"), prompt=prompt,
                      answer=task.get("answer"), tests=task.get("tests"), entry_point=task.get("entry_point"))
    verdicts = [shared_verifier(problem.kind).verify(problem, r) for r in responses]
    judged = [v.passed for v in verdicts if v.error_kind is None]
    return sum(judged) / len(judged) if judged else None


__all__ = ["Verdict", "get_verifier", "record_pass_rate", "shared_verifier"]
