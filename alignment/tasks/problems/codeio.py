"""CodeI/O code tasks (reasoning-gym's ``data/codeio.jsonl.gz``) as function-writing problems.

Each record has a task description, an input/output spec, a reference ``main_solution``
and an input generator. The problem asks for ``main_solution``; its tests (``check``)
run the reference and the candidate on ``N_CASES`` inputs drawn from the generator with a
fixed seed, and compare the JSON-normalised outputs (floats to 1e-6 relative).

Only records whose reference imports nothing but deterministic standard-library modules
are used (no numpy/sympy, no ``random`` inside the solution, so outputs are reproducible),
and 10% of the records (ranked by sha256) are held out.

    python -c "from alignment.tasks.problems import load_problems; print(load_problems('codeio', 'train', 1, 0)[0].prompt)"
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path
from random import Random

from alignment.artifacts import iter_jsonl
from alignment.tasks.problems import Problem, split_by_key

HELDOUT_FRAC = 0.1
N_CASES = 5
ALLOWED_IMPORTS = {
    "math", "collections", "itertools", "typing", "re", "json", "string", "copy", "functools", "heapq",
    "bisect", "fractions", "decimal", "operator", "abc", "enum", "dataclasses", "cmath", "numbers",
}

_CHECK_TEMPLATE = '''
import copy as _copy
import json as _json
import math as _math
import random as _random
import string as _string
from random import Random as _Random

_REFERENCE = {reference!r}
_GENERATOR = {generator!r}


def _norm(x):
    return _json.loads(_json.dumps(x, default=str))


def _close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
            return _math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def check(candidate):
    # references sometimes use modules their original wrapper imported (json, math)
    ref_ns = {{"__name__": "__reference__", "json": _json, "math": _math, "copy": _copy, "string": _string}}
    exec(_REFERENCE, ref_ns)
    gen_ns = {{"Random": _Random, "random": _random, "string": _string, "math": _math}}
    exec(_GENERATOR, gen_ns)
    rng = _Random({seed})
    for case in range({n_cases}):
        inputs = gen_ns["generate_inputs"](rng)
        want = _norm(ref_ns["main_solution"](**_copy.deepcopy(inputs)))
        got = _norm(candidate(**_copy.deepcopy(inputs)))
        assert _close(got, want), f"case {{case}}: got {{str(got)[:200]}}, want {{str(want)[:200]}}"
'''


def _data_file() -> Path:
    spec = importlib.util.find_spec("reasoning_gym")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("reasoning-gym is not installed: pip install reasoning-gym==0.1.25")
    return Path(spec.submodule_search_locations[0]) / "data" / "codeio.jsonl.gz"


def _usable(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    has_main = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name.split(".")[0] not in ALLOWED_IMPORTS for a in node.names):
                return False
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] not in ALLOWED_IMPORTS:
                return False
        elif isinstance(node, ast.FunctionDef) and node.name == "main_solution":
            has_main = True
    return has_main


@lru_cache(maxsize=1)
def _records() -> tuple[dict, ...]:
    rows = []
    # max_bytes=0: reasoning-gym's own data file, not subject to the run's row-size cap
    for index, (_, r) in enumerate(iter_jsonl(_data_file(), max_bytes=0)):
        if _usable(r["code_sample"]) and "def generate_inputs" in r["input_generator"]:
            rows.append({"index": index, **r})
    return tuple(rows)


def record_split() -> tuple[list[int], list[int]]:
    return split_by_key([r["index"] for r in _records()], HELDOUT_FRAC, salt="codeio")


def _to_problem(r: dict, split: str) -> Problem:
    prompt = (
        f"{r['task_description'].strip()}\n\n{r['input_output_spec'].strip()}\n\n"
        "Write a Python function `main_solution` with exactly these inputs (as keyword arguments) "
        "that returns the output described above. Answer with one ```python code block."
    )
    tests = _CHECK_TEMPLATE.format(reference=r["code_sample"], generator=r["input_generator"], seed=r["index"], n_cases=N_CASES)
    diff = r.get("difficulty")
    return Problem(
        id=f"codeio/{r['index']}",
        kind="code",
        prompt=prompt,
        tests=tests,
        entry_point="main_solution",
        difficulty=float(diff) if diff is not None else None,
        source="codeio",
        meta={"split": split, "reference": f"```python\n{r['code_sample']}\n```"},
    )


def load_codeio(split: str, n: int | None, seed: int) -> list[Problem]:
    train, held = record_split()
    keep = set(train if split == "train" else held)
    rows = [r for r in _records() if r["index"] in keep]
    if n is not None and n < len(rows):
        picked = sorted(Random(f"codeio:{split}:{seed}").sample(range(len(rows)), n))
        rows = [rows[i] for i in picked]
    return [_to_problem(r, split) for r in rows]
