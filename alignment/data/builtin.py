"""Offline sources that ship with the repo's environment: named ``builtin:<name>`` in recipes.

- ``builtin:chatterbot_en`` / ``builtin:chatterbot_zh``: the chatterbot-corpus dialogs
  (2,026 English + 467 Chinese conversations, BSD-3-Clause), read from the installed
  ``chatterbot_corpus`` package's YAML files (no import of the package itself).
- ``builtin:synthetic_math``: arithmetic chat examples generated here, deterministic by seed:
  single operations, two-step expressions and short word problems, in English and Chinese,
  asked and answered in the task format (alignment/tasks/format.py: the math instruction, worked
  steps one per line, a last line ``#### N``), as synth, online DPO and eval ask. Sizes are
  unlimited; ``size`` picks how many.
- ``builtin:task_templates`` / ``builtin:task_gsm_symbolic``: worked solutions of the training
  task families (alignment/tasks/problems: our bilingual templates, reasoning-gym's GSM-Symbolic
  generators), ``train`` split only, each problem once, asked and answered in the task format.
  Each record carries ``task`` (``kind``, ``answer``) so a verifier can judge the policy's own
  answers to it (sft_hard's pass rates). ``size`` picks how many problems are drawn (rows whose
  reference carries float noise such as ``22.916666666666668`` are dropped, so a few less).
- ``builtin:safety``: RAISE-style safety SFT targets (alignment/safety/targets.py): harmful
  requests with refusals that explain and redirect, and benign look-alikes with helpful
  answers, English and Chinese; ``size`` picks how many.

Preview from the shell: ``python -m alignment.data.builtin synthetic_math 5``.
"""

from __future__ import annotations

import importlib.util
import random
import re
import sys
from pathlib import Path

import yaml

from alignment.paths import INSTALL_HINT
from alignment.tasks.format import math_solution, task_message, user_message

BUILTINS = ("chatterbot_en", "chatterbot_zh", "synthetic_math", "task_templates", "task_gsm_symbolic", "safety")
LICENSES = {
    "chatterbot_en": "BSD-3-Clause (chatterbot-corpus 1.3.3)",
    "chatterbot_zh": "BSD-3-Clause (chatterbot-corpus 1.3.3)",
    "synthetic_math": "generated in-repo (alignment/data/builtin.py), same license as the repo",
    "task_templates": "generated in-repo (alignment/tasks/problems/templates.py), same license as the repo",
    "task_gsm_symbolic": "Apache-2.0 (reasoning-gym's GSM-Symbolic generators, GSM8K-test templates: MIT)",
    "safety": "generated in-repo (alignment/safety/targets.py), same license as the repo",
}


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (some data packages import slowly)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def chatterbot_records(lang: str) -> list[dict]:
    """Every chatterbot conversation of ``lang`` (``english`` / ``chinese``) as chat records.

    Conversations alternate user/assistant turns; an odd-length one ends on a user turn,
    which is dropped so every record ends with the assistant.
    """
    source = {"english": "chatterbot_en", "chinese": "chatterbot_zh"}[lang]
    records = []
    for path in sorted((package_dir("chatterbot_corpus") / "data" / lang).glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for i, turns in enumerate(data.get("conversations") or []):
            turns = [str(t) for t in turns if str(t).strip()]
            if len(turns) % 2:
                turns = turns[:-1]
            if not turns:
                continue
            messages = [{"role": ("user", "assistant")[j % 2], "content": t} for j, t in enumerate(turns)]
            records.append({"messages": messages, "source": source, "id": f"{source}:{path.stem}:{i}"})
    return records


# --------------------------------------------------------------------------- synthetic math

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_EN_ASK = ["What is {e}?", "Compute {e}.", "Calculate {e} step by step.", "Evaluate: {e}"]
_ZH_ASK = ["{e} 等于多少?", "请计算 {e}。", "计算:{e}"]
_ITEMS_EN = ["apples", "books", "coins", "marbles", "pencils", "stickers"]
_ITEMS_ZH = ["苹果", "本书", "枚硬币", "颗弹珠", "支铅笔"]
_NAMES_EN = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima"]
_NAMES_ZH = ["小明", "小红", "小华", "小李"]


def _single(rng: random.Random, zh: bool) -> tuple[str, str]:
    op = rng.choice(list(_OPS))
    a, b = rng.randint(2, 999), rng.randint(2, 99 if op == "*" else 999)
    expr, val = f"{a} {op} {b}", _OPS[op](a, b)
    ask = rng.choice(_ZH_ASK if zh else _EN_ASK).format(e=expr)
    return ask, math_solution([f"{expr} = {val}。" if zh else f"{expr} = {val}."], val)


def _two_step(rng: random.Random, zh: bool) -> tuple[str, str]:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
    op1, op2 = rng.choice(["+", "-"]), rng.choice(["*", "+", "-"])
    inner = _OPS[op1](a, b)
    val = _OPS[op2](inner, c)
    expr = f"({a} {op1} {b}) {op2} {c}"
    ask = rng.choice(_ZH_ASK if zh else _EN_ASK).format(e=expr)
    if zh:
        body = math_solution([f"先算括号:{a} {op1} {b} = {inner}。", f"再算:{inner} {op2} {c} = {val}。"], val)
    else:
        body = math_solution([f"First the parentheses: {a} {op1} {b} = {inner}.", f"Then {inner} {op2} {c} = {val}."], val)
    return ask, body


def _word(rng: random.Random, zh: bool) -> tuple[str, str]:
    a, b, c = rng.randint(3, 60), rng.randint(2, 40), rng.randint(1, 20)
    total = a + b - c
    if zh:
        name, item = rng.choice(_NAMES_ZH), rng.choice(_ITEMS_ZH)
        ask = f"{name}有{a}{item},又得到了{b}{item},然后送出{c}{item}。{name}现在有多少{item}?"
        body = math_solution([f"{a} + {b} = {a + b}。", f"{a + b} - {c} = {total}。"], total)
    else:
        name, item = rng.choice(_NAMES_EN), rng.choice(_ITEMS_EN)
        ask = f"{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} does {name} have now?"
        body = math_solution([f"{name} starts with {a} and gets {b}: {a} + {b} = {a + b}.",
                              f"Giving away {c}: {a + b} - {c} = {total}."], total)
    return ask, body


def synthetic_math_records(size: int, seed: int = 0, zh_fraction: float = 0.25) -> list[dict]:
    """``size`` arithmetic chat examples, identical for the same ``(size, seed)``.

    Args:
        size (`int`): number of examples.
        seed (`int`, *optional*, defaults to `0`): generator seed.
        zh_fraction (`float`, *optional*, defaults to `0.25`): share of Chinese prompts.
    """
    rng = random.Random(f"synthetic_math:{seed}")
    kinds = (_single, _two_step, _word)
    records = []
    for i in range(size):
        zh = rng.random() < zh_fraction
        ask, answer = rng.choice(kinds)(rng, zh)
        records.append(
            {
                "messages": [{"role": "user", "content": task_message("math", ask)}, {"role": "assistant", "content": answer}],
                "source": "synthetic_math",
                "id": f"synthetic_math:{seed}:{i}",
            }
        )
    return records


_FLOAT_NOISE = re.compile(r"\d\.\d{5,}")


def task_records(source: str, size: int, seed: int = 0) -> list[dict]:
    """Worked-solution chat records of ``size`` distinct ``train`` problems of a task family.

    The user turn is the task format's (the instruction, a blank line, the problem); the answer is
    the problem's reference solution (steps one per line, last line ``#### <answer>``). Problems
    whose reference shows float noise are dropped. Each record keeps ``task`` =
    ``{"kind", "answer", "problem_id"}`` for verifiers.
    """
    from alignment.tasks.problems import load_problems

    records = []
    for p in load_problems(source, "train", size, seed):
        reference = p.meta.get("reference")
        if not reference or _FLOAT_NOISE.search(reference):
            continue
        records.append(
            {
                "messages": [{"role": "user", "content": user_message(p)}, {"role": "assistant", "content": reference}],
                "source": f"task_{source}",
                "id": p.id,
                "task": {"kind": p.kind, "answer": p.answer, "problem_id": p.id},
            }
        )
    return records


def builtin_records(name: str, size: int | None = None, seed: int = 0) -> list[dict]:
    """Records of the builtin source ``name`` (one of :data:`BUILTINS`)."""
    if name == "chatterbot_en":
        return chatterbot_records("english")
    if name == "chatterbot_zh":
        return chatterbot_records("chinese")
    if name == "synthetic_math":
        return synthetic_math_records(size if size is not None else 10_000, seed)
    if name in ("task_templates", "task_gsm_symbolic"):
        return task_records(name[len("task_"):], size if size is not None else 10_000, seed)
    if name == "safety":
        from alignment.safety.targets import safety_records

        return [{k: r[k] for k in ("messages", "source", "id")} for r in safety_records(size if size is not None else 2_000, seed)]
    raise ValueError(f"unknown builtin source 'builtin:{name}'; known: {', '.join('builtin:' + b for b in BUILTINS)}")


if __name__ == "__main__":
    import json

    name, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for r in builtin_records(name, size=n)[:n]:
        print(json.dumps(r, ensure_ascii=False))
