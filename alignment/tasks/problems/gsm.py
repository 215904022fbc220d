"""GSM-Symbolic problems from reasoning-gym, split by template.

reasoning-gym ships one generator per GSM8K-test template (``generate_<k>``; the usable ones
are listed in its ``tasks_ok``). We hold out a fixed 20% of the templates (ranked by
sha256), so held-out accuracy measures transfer to unseen problem structures, not to new
numbers in seen ones. Each problem's numbers come from ``Random(f"gsm:{seed}:{i}")``.

    python -c "from alignment.tasks.problems.gsm import template_split; print(template_split())"
"""

from __future__ import annotations

from functools import lru_cache
from random import Random

from alignment.tasks.format import final_answer_line, split_final_answer
from alignment.tasks.problems import Problem, draw_unique, split_by_key

HELDOUT_FRAC = 0.2


@lru_cache(maxsize=1)
def _generators() -> dict[int, object]:
    from reasoning_gym.arithmetic.gsm_symbolic import generators_00_49, generators_50_99
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import tasks_ok

    gens = {}
    for mod in (generators_00_49, generators_50_99):
        for name in dir(mod):
            if name.startswith("generate_") and int(name[len("generate_") :]) in tasks_ok:
                gens[int(name[len("generate_") :])] = getattr(mod, name)
    return dict(sorted(gens.items()))


def template_split() -> tuple[list[int], list[int]]:
    """(train template ids, held-out template ids)."""
    return split_by_key(list(_generators()), HELDOUT_FRAC, salt="gsm_symbolic")


def load_gsm_symbolic(split: str, n: int | None, seed: int) -> list[Problem]:
    if n is None:
        raise ValueError("gsm_symbolic is procedural: pass n")
    train, held = template_split()
    templates = held if split == "heldout" else train
    gens = _generators()

    def draw(i: int) -> tuple[str, Problem]:
        rng = Random(f"gsm:{split}:{seed}:{i}")
        tid = rng.choice(templates)
        ex = gens[tid](rng, 1.0)
        cot = ex["metadata"]["answer_cot"]
        answer = str(ex["answer"])
        working, _ = split_final_answer(cot)  # the generators write "#### 168.0" for 168: one answer line
        problem = Problem(
            id=f"gsm_symbolic/t{tid}/s{seed}/{i}",
            kind="math",
            prompt=ex["question"],
            answer=answer,
            difficulty=float(cot.count("\n")),  # number of worked steps
            source="gsm_symbolic",
            meta={"template": tid, "split": split, "lang": "en", "reference": f"{working}\n{final_answer_line(answer)}"},
        )
        return f"{tid}:{ex['question']}", problem

    return draw_unique("gsm_symbolic", split, n, draw)
