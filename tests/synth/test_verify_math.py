"""Math verifier tables: equivalent forms pass, wrong/malformed/huge answers fail fast and never raise."""

import time
from types import SimpleNamespace

import pytest

from synth.verify import Verdict, get_verifier
from synth.verify.math import extract_answer, step_arithmetic_ok

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
     ("in 2024 = the year", True), ("speed is 206 / 2 = 103 km", True)],
)
def test_step_arithmetic_check(step, ok):
    assert step_arithmetic_ok(step) is ok
