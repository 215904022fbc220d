"""Math verifier tables: equivalent forms pass, wrong/malformed/huge answers fail fast and never raise."""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from alignment.tasks.verify import Verdict, get_verifier
from alignment.tasks.verify.math import MathVerifier, extract_answer, step_arithmetic_ok

V = get_verifier("math")


def verify(response, answer):
    return V.verify(SimpleNamespace(answer=answer, id="t"), response)


@pytest.mark.parametrize(
    "response, answer",
    [
        ("so the total is \\boxed{\\frac{1}{2}}", "0.5"),  # LaTeX fraction vs decimal
        ("\\boxed{\\dfrac12}", "1/2"),  # \dfrac with single-char args
        ("#### 1,000", "1000"),  # thousands separator
        ("The answer is $18.50.", "18.5"),  # dollar sign, trailing zero, final period
        ("Answer: 9 apples", "9"),  # unit word stripped
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),  # symbolic radical equality
        ("答案：42", "42"),  # Chinese answer marker
        ("so x = 3", "3"),  # last number fallback
        ("The answer is 2x+2", "2(x+1)"),  # symbolic expression
        ("it is \\boxed{\\pi/2}", "\\frac{\\pi}{2}"),  # pi
        ("#### 25%", "25"),  # percent sign stripped
        ("\\boxed{\\text{12 cm}}", "12"),  # units inside \text
        ("#### -7", "-7"),  # negative
        ("Step 1: 3 + 4 = 7\n#### 7/3", "\\frac{7}{3}"),  # #### beats earlier numbers
    ],
)
def test_equivalent_forms_pass(response, answer):
    v = verify(response, answer)
    assert v == Verdict(True, 1.0, "ok", None), v


@pytest.mark.parametrize(
    "response, answer, detail",
    [
        ("\\boxed{3}", "4", "wrong"),  # plain wrong
        ("\\boxed{0.33}", "1/3", "wrong"),  # exact compare: no rounding tolerance
        ("#### 8", "-8", "wrong"),  # sign matters
        ("\\boxed{", "3", "no answer"),  # unclosed box, no number anywhere
        ("", "3", "no answer"),  # empty
        ("I don't know", "3", "no answer"),  # no number
        ("__import__('os').system('true')", "3", "no answer"),  # code is never evaluated
        ("#### abc(", "3", "unparsable"),  # malformed expression
    ],
)
def test_wrong_and_malformed_fail(response, answer, detail):
    v = verify(response, answer)
    assert not v.passed and v.score == 0.0 and v.error_kind is None
    assert detail in v.detail


@pytest.mark.parametrize(
    "response",
    [
        "\\boxed{9^{9^{9}}}",  # power tower: refused, not computed
        "#### " + "9" * 100_000,  # 100K-digit number
        "#### " + "(" * 5000 + "1" + ")" * 5000,  # deep nesting
        "\\boxed{" + "1+" * 3000 + "1}",  # long expression
    ],
)
def test_huge_answers_fail_fast(response):
    t0 = time.monotonic()
    v = verify(response, "3")
    assert not v.passed
    assert time.monotonic() - t0 < 1.0


def test_unparsable_reference_is_not_a_wrong_response():
    v = verify("#### 3", "three apples")
    assert v.error_kind == "bad_reference" and not v.passed


def test_extract_prefers_last_box_and_handles_nesting():
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert extract_answer("no digits") is None


@pytest.mark.parametrize(
    "step, ok",
    [("3 * 4 = 12 apples", True), ("3 * 4 = 13", False), ("10 / 3 = 3.33", True), ("5 + 5 = 10, then 10 x 2 = 21", False),
     ("in 2024 = the year", True), ("speed is 206 / 2 = 103 km", True),
     # readings a worked solution uses: an unspaced a/b is one fraction, a % result, a rounded count,
     # the tail of an expression begun in words
     ("需要 1 / 1/4 = 4 小时。", True), ("it takes her 10÷1/2=20 minutes", True), ("6 / 8 = 75.0%.", True),
     ("6 / 8 = 70%", False), ("899.5 / 1.15 = 782 crackers", True), ("90 / 12 = 8 sheets", True),
     ("90 / 12 = 9 sheets", False), ("40 questions x 40/100 = 16 history questions", True),
     # a lucky answer's wrong step: an integer result must be exact, a stated rounding must hold
     ("还差 89 - 17 = 76 元。", False), ("Girls: 8 * 2 / 4 = 16.", False), ("66 / 16 向上取整是 4 周。", False),
     ("66 / 16 向上取整是 5 周。", True), ("66 / 16 rounded up is 5 weeks.", True), ("64 / 16 rounded up is 5 weeks.", False)],
)
def test_step_arithmetic_check(step, ok):
    assert step_arithmetic_ok(step) is ok


@pytest.mark.parametrize("source, split", [("templates", "train"), ("templates", "heldout"), ("gsm_symbolic", "heldout")])
def test_worked_solutions_pass_the_step_check(source, split):
    from alignment.tasks.problems import load_problems

    steps = [s for p in load_problems(source, split, n=2000, seed=0) for s in p.meta["reference"].split("\n")]
    assert len(steps) > 4000 and [s for s in steps if not step_arithmetic_ok(s)] == []


# --------------------------------------------------------------------------- math-2: the forms Math-Verify brings


@pytest.mark.parametrize(
    "response, answer, passed",
    [
        # sets and lists
        ("\\boxed{\\{2,1\\}}", "\\{1, 2\\}", True),  # a set's order does not matter
        ("\\boxed{1, 2}", "\\{1,2\\}", True),  # a bare list reads as the set
        ("The answer is {1, 2}", "\\{1, 2\\}", True),  # braces without backslashes, after "answer is"
        ("\\boxed{2 \\text{ and } 3}", "\\{2, 3\\}", True),  # "a and b" is a list
        ("\\boxed{\\{1,3\\}}", "\\{1,2\\}", False),  # one element differs
        ("\\boxed{1, 2, 3}", "\\{1,2\\}", False),  # one element too many
        # intervals
        ("\\boxed{(0, 1]}", "(0, 1]", True),  # half-open interval
        ("\\boxed{(0,1)}", "(0, 1]", False),  # open where the reference is closed
        ("\\boxed{[0, 1]}", "(0, 1]", False),  # closed where the reference is open
        ("\\boxed{(-\\infty, 2)}", "(-\\infty, 2)", True),  # infinite end
        ("\\boxed{x \\in [2, 5]}", "[2,5]", True),  # membership written out
        # matrices
        ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),  # spacing
        ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),  # one entry
        ("\\boxed{\\begin{bmatrix} \\frac{1}{2} \\\\ 0.5 \\end{bmatrix}}", "\\begin{pmatrix}1/2\\\\1/2\\end{pmatrix}", True),  # entries by value
        # LaTeX fractions and radicals
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt 3}{2}", True),  # \sqrt 3 without braces
        ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}", True),  # radicals simplify
        ("\\boxed{\\dfrac{3}{4}}", "0.75", True),  # \dfrac vs decimal
        ("\\boxed{\\frac{3}{5}}", "0.75", False),  # a different fraction
        ("\\boxed{0.333333}", "1/3", True),  # decimals compare rounded to 6 places (Math-Verify's rule)
        ("#### 2.333", "7/3", False),  # ... so 3 places is not enough
        # percentages
        ("\\boxed{25\\%}", "25", True),  # 25% is the number 25 with a percent sign
        ("The answer is 25 percent", "25", True),  # spelled out
        ("\\boxed{0.25}", "25\\%", False),  # ... not the fraction 0.25
        # units
        ("\\boxed{5 \\text{ cm}}", "5", True),  # \text unit
        ("The answer is 5 cm.", "5", True),  # plain unit word
        ("#### 5cm", "5", True),  # unit glued to the number
        ("\\boxed{5\\,\\mathrm{cm}^2}", "5", True),  # \mathrm unit with a power
        ("The answer is 6 cm", "5", False),  # a unit does not make a wrong number right
        ("答案是 42 个苹果", "42", True),  # Chinese measure word and noun
        # equations
        ("\\boxed{x = 3}", "3", True),  # an equation answers with its right-hand side
        ("\\boxed{3}", "x = 3", True),  # a bare value answers an assignment
        ("\\boxed{x = 4}", "3", False),  # wrong right-hand side
        ("\\boxed{y = 2x + 1}", "2x+1", True),  # symbolic right-hand side
        ("\\boxed{a=1, b=2}", "a=1, b=2", True),  # several assignments
        # other forms
        ("\\boxed{30^\\circ}", "30", True),  # degrees
        ("\\boxed{3 + 2i}", "3+2i", True),  # complex number
        ("\\boxed{\\text{Monday}}", "\\text{Monday}", True),  # a word answer in \text
        ("\\boxed{x^2+2x+1}", "(x+1)^2", True),  # expanded vs factored
        # plain-text math (Math-Verify alone reads "3 pi" as 3*p*i)
        ("#### 3 pi", "3\\pi", True),  # pi spelled out
        ("#### 2 sqrt(3)", "2\\sqrt{3}", True),  # sqrt(..)
        ("#### 2√3", "\\sqrt{12}", True),  # the radical sign
        ("#### 2 spies", "2", True),  # ... but "pi" inside a word stays a word
    ],
)
def test_math_verify_forms(response, answer, passed):
    v = verify(response, answer)
    assert v.passed is passed and v.error_kind is None and v.formatted, v


@pytest.mark.parametrize(
    "response, detail",
    [
        ("\\boxed{9^{9^{9}}}", "power with more than"),  # refused before SymPy would compute 9**387420489
        ("#### 10^{100000}", "power with more than"),  # 100K digits
        ("\\boxed{(1/2)^{-10^{6}}}", "power with more than"),  # a negative exponent costs the same
        ("\\boxed{9^9^9^9}", "wrong"),  # parsed ((9^9)^9)^9 = 9^729: small enough to compare
        ("\\boxed{\\frac{1}{0}}", "wrong"),  # complex infinity is no number
        ("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "answer too long"),  # 10K nested braces
        ("\\boxed{" + "(" * 13 + "1" + ")" * 13 + "}", "nested 13 deep"),  # short but deep: ANTLR's time grows steeply
        ("x" * 1_000_000, "no answer"),  # 1 MB without an answer
        ("#### " + "9" * 1_000_000, "answer too long"),  # a 1M-digit number
        ("\\boxed{" * 150_000, "no answer"),  # 1 MB of unclosed boxes: extraction stays linear
        ("1 " * 500_000, "wrong"),  # 1 MB of numbers: the last one is read
        ("\\boxed{\\binom{1000000}{500000}}", "binomial/gcd/lcm"),  # the parser would evaluate it
        ("\\boxed{\\gcd(9^{9^{9}}, 3)}", "binomial/gcd/lcm"),  # same
        ("\\boxed{100000!}", "factorial of more than"),  # a 456K-digit factorial
        ("\\boxed{\\sum_{i=1}^{10^{9}} i}", "unevaluated Sum"),  # not a final answer
        ("\\boxed{\\int_0^1 e^{x^2} dx}", "unevaluated Integral"),  # same
        ("\\boxed{(x+1)^{1000}}", "symbolic power"),  # expanding it takes seconds
        ("\\boxed{\\x00}", "unparsable"),  # a NUL byte
    ],
)
def test_hostile_answers_fail_fast_with_a_reason(response, detail):
    t0 = time.monotonic()
    v = verify(response, "3")
    assert not v.passed and v.error_kind is None
    assert detail in v.detail, v
    assert time.monotonic() - t0 < 2.0


def test_slow_comparison_times_out_on_the_cpu_budget():
    """What passes every pre-check but is slow stops at the budget (watchdog, any thread)."""
    v_fast = get_verifier("math", timeout_s=0.05)
    t0 = time.monotonic()
    v = v_fast.verify(SimpleNamespace(answer="1"), "\\boxed{\\sin(x)^{20}+\\cos(x)^{20}+\\tan(x)^{3}}")
    assert not v.passed and v.detail.startswith("timeout:"), v
    assert time.monotonic() - t0 < 2.0


def test_response_only_words_is_unformatted():
    v = verify("The answer is that there are three apples", "3")
    assert not v.passed and not v.formatted and "unparsable" in v.detail


def test_reference_is_parsed_once():
    mv = get_verifier("math")
    for _ in range(3):
        assert mv.verify(SimpleNamespace(answer="\\frac{\\sqrt{3}}{2}"), "\\boxed{\\frac{\\sqrt 3}{2}}").passed
    info = mv._gold.cache_info()
    assert info.misses == 1 and info.hits == 2


@pytest.mark.parametrize(
    "gold, pred",
    [("42", "42"), ("42", "42.0"), ("42", "41"), ("7/3", "\\frac{7}{3}"), ("7/3", "2.333333"), ("7/3", "2.33"),
     ("0.5", "\\frac{1}{2}"), ("1,000", "1000"), ("-3", "-3"), ("3", "x = 3"), ("3", "x = 4"), ("18.5", "18.50"),
     ("1/3", "0.333333"), ("123456789", "123456789.0000001"), ("-\\frac{3}{4}", "-0.75"), ("007", "7"), ("2", "\\frac{4}{2}")],
)
def test_fast_paths_agree_with_math_verify(gold, pred):
    """Plain numbers, fractions and 'x = N' skip Math-Verify's parser; the verdict must be its."""
    import math_verify

    want = math_verify.verify(math_verify.parse(f"${gold}$", parsing_timeout=None),
                              math_verify.parse(f"${pred}$", parsing_timeout=None), timeout_seconds=None)
    assert verify(f"\\boxed{{{pred}}}", gold).passed is want


_THREAD_ROWS = [
    ("\\boxed{\\{2,1\\}}", "\\{1, 2\\}"), ("\\boxed{(0, 1]}", "(0, 1]"), ("\\boxed{[0, 1]}", "(0, 1]"), ("\\boxed{x = 3}", "3"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"), ("#### 42", "42"), ("#### 41", "42"), ("\\boxed{9^{9^{9}}}", "3"),
    ("\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"), ("\\boxed{x^2+2x+1}", "(x+1)^2"),
]


def test_verifies_in_worker_threads_like_in_the_main_thread():
    """lockstep search and eval call the verifier from threads: same verdicts, no signal errors."""
    want = [verify(r, a) for r, a in _THREAD_ROWS]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda ra: verify(*ra), _THREAD_ROWS * 4))
    assert got == want * 4


def _fresh_rows(k: int) -> list[tuple[str, str]]:
    """LaTeX answers no cache has seen (Math-Verify caches its last 20 parses)."""
    return [(f"\\boxed{{x^2+{2 * k}x+{k * k}}}", f"(x+{k})^2"), (f"\\boxed{{\\{{{k + 1},{k}\\}}}}", f"\\{{{k}, {k + 1}\\}}"),
            (f"\\boxed{{({k}, {k + 2}]}}", f"({k}, {k + 2})"), (f"\\boxed{{\\frac{{\\sqrt{{{k}}}}}{{2}}}}", f"\\sqrt{{{k}/4}}")]


def test_interrupted_parses_leave_no_deadlock_or_damage():
    """Hundreds of parses/compares cut at random points by tiny budgets, 4 threads at once,
    then the same verdicts as before and no thread stuck (an asynchronous exception landing in
    a lock protocol, e.g. an import lock, would hang the process)."""
    import math_verify.parser

    from alignment.tasks.verify.bounded import deadlines_fired

    want = [(v.passed, v.detail) for v in (verify(r, a) for r, a in _fresh_rows(1000))]
    rng = random.Random(0)
    jobs = [(row, rng.uniform(0.0005, 0.02)) for k in range(2, 42) for row in _fresh_rows(k)]
    fired0 = deadlines_fired()

    def hammer(job):
        (r, a), budget = job
        return MathVerifier(timeout_s=budget).verify(SimpleNamespace(answer=a), r)

    done = []
    t = threading.Thread(target=lambda: done.append(list(ThreadPoolExecutor(4).map(hammer, jobs))), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "verifier threads deadlocked"
    assert any(v.detail.startswith("timeout") for v in done[0]) and deadlines_fired() > fired0  # the budgets cut work
    math_verify.parser.parse_latex_cached.cache_clear()
    assert [(v.passed, v.detail) for v in (verify(r, a) for r, a in _fresh_rows(1000))] == want


def test_math_verify_signal_timeouts_are_off():
    """Math-Verify's signal.alarm timeouts raise in non-main threads; ours must never call them."""
    import signal

    calls = []
    orig = signal.alarm
    signal.alarm = lambda s: calls.append(s) or orig(s)
    try:
        verify("\\boxed{\\{2,1\\}}", "\\{1, 2\\}")
        verify("\\boxed{x^2+2x+1}", "(x+1)^2")
    finally:
        signal.alarm = orig
    assert calls == []


def test_check_steps_fails_a_right_answer_after_a_wrong_step():
    from alignment.tasks.verify.math import WRONG_STEP, first_wrong_step

    lucky = "Girls: 8 * 2 / 4 = 16.\nBoys: 8 - 4 = 4.\n#### 4"
    assert MathVerifier().verify(SimpleNamespace(answer="4", id="t"), lucky).passed  # the eval's verdict: the final answer
    v = MathVerifier(check_steps=True).verify(SimpleNamespace(answer="4", id="t"), lucky)
    assert not v.passed and v.formatted and v.detail.startswith(WRONG_STEP) and "8 * 2 / 4 = 16" in v.detail
    assert MathVerifier(check_steps=True).verify(SimpleNamespace(answer="4", id="t"), "Girls: 8 * 2 / 4 = 4.\nBoys: 8 - 4 = 4.\n#### 4").passed
    wrong = MathVerifier(check_steps=True).verify(SimpleNamespace(answer="5", id="t"), lucky)  # a wrong answer stays "wrong", not "wrong step"
    assert not wrong.passed and wrong.detail.startswith("wrong:")
    assert first_wrong_step(lucky) == "Girls: 8 * 2 / 4 = 16." and first_wrong_step("#### 4") is None
