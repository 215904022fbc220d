"""Math verifier: extract the final answer from a response, compare it with the reference
using Hugging Face's Math-Verify, under a CPU-time bound that works in any thread.

Extraction (ours, first rule that matches wins, linear time, in the last ``MAX_SEARCH_CHARS``
characters of the response):
  1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched),
  2. the text after the last ``####`` (GSM8K style),
  3. the text after the last "Answer:" / "the answer is" / "答案是" / "答案为" / "答案：" / "答：",
  4. the last number in the response.

Preparation: ``$`` and ``\\$`` signs, ``\\(..\\)`` / ``\\[..\\]`` wrappers and a trailing
period are dropped; plain-text ``pi``, ``sqrt(..)`` and ``√`` become LaTeX; one whole
``\\text{..}`` is unwrapped; a number followed only by words ("9 apples", "18.50 dollars per
hour", "42个苹果") keeps the number.

Parsing and comparison: Math-Verify (``math_verify.parse`` of ``$answer$`` with LaTeX and
plain-expression extraction, then ``math_verify.verify(gold, pred)``). So an answer may be a
number, a fraction or radical (``\\frac{1}{2}`` == 0.5, ``2\\sqrt{2}`` == ``\\sqrt{8}``), a
percentage (``25\\%`` == 25), a number with units (``5 cm`` == 5), an equation (``x = 3`` == 3),
a set or list (``{1, 2}`` == ``\\{2,1\\}``), an interval (``(0, 1]``; open and closed ends
matter), a matrix (``\\begin{pmatrix}``), or an expression (``2x+2`` == ``2(x+1)``). Integers
and fractions compare exactly; a decimal compares after rounding both sides to 6 places
(Math-Verify's ``float_rounding=6``: ``0.333333`` == 1/3, ``0.33`` != 1/3).

Speed: a plain decimal number or integer fraction (``a/b``, ``\\frac{a}{b}``; most GSM answers),
and ``x = N`` when the reference is no equation, skip Math-Verify's parser (ANTLR, 1-6 ms):
they become the SymPy value that parser would give (Math-Verify compares an equation's
right-hand side with a non-equation reference anyway). Two exact rationals compare with
``==``, which is what ``math_verify.verify`` returns for them. Everything else is Math-Verify's
own. Parsed references are cached per answer string (``MathVerifier._gold``).

Bounds (the response is untrusted: every input gives a verdict, never a hang or an exception):
  * before parsing: answers longer than ``MAX_ANSWER_CHARS``, nested deeper than
    ``MAX_NESTING``, or with binomials/gcd/lcm of big arguments (the LaTeX parser evaluates
    those while parsing) are refused;
  * after parsing, before comparing: more than ``MAX_NODES`` nodes, a power whose value would
    have more than ``MAX_POW_DIGITS`` digits (``9^{9^{9}}``), a symbolic power above
    ``MAX_SYMBOLIC_EXPONENT``, a factorial above ``MAX_FACTORIAL``, or an unevaluated
    integral/sum/product/limit/derivative are refused. Big-integer arithmetic is one C call
    that nothing interrupts, so it must never start;
  * the parse and the comparison together run under ``alignment.tasks.verify.bounded.run_bounded``:
    ``timeout_s`` (default 0.5 s) of the verifying thread's CPU time, enforced by a watchdog
    thread that raises into the verifying thread. Math-Verify's own timeouts are off: they
    use ``signal.alarm``, which works only in the main thread.

Run the table tests: ``python -m pytest -q tests/tasks/test_verify_math.py``.
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import re
from typing import Any

import sympy
from sympy import Basic, MatrixBase

from alignment.tasks.verify import Verdict
from alignment.tasks.verify.bounded import run_bounded

MAX_ANSWER_CHARS = 300  # longer "answers" are not answers; also bounds parse cost
MAX_NESTING = 12  # brackets/braces/parentheses deep (ANTLR's parse time grows steeply with depth)
MAX_NODES = 500  # nodes of the parsed expression
MAX_POW_DIGITS = 2000  # refuse a**b whose result would have more digits than this
MAX_SYMBOLIC_EXPONENT = 100  # refuse (x+1)**1000: expanding it is slow
MAX_FACTORIAL = 1000  # refuse n! (and binomial, gamma, ...) with n above this
MAX_SEARCH_CHARS = 200_000  # extraction reads the end of a response: a 1 MB one costs what 200 KB does
DEFAULT_TIMEOUT_S = 0.5  # CPU seconds for parsing + comparing one answer

# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}]")
_ANSWER_RES = [
    re.compile(r"####\s*(.+)"),
    re.compile(r"\banswer\b\s*(?:is\s*[:：]?|[:：])\s*(.+)", re.IGNORECASE),
    re.compile(r"(?:答案是|答案为|答案[:：]|答[:：])\s*(.+)"),
]
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with nested braces matched; None if absent/unclosed.

    Linear time: if a later box never closes, an earlier one closes before the later one
    starts or never (its depth stays above the later box's), so each box scans only up to
    the next one.
    """
    boxes = list(_BOX_RE.finditer(text))
    limit = len(text)
    for m in reversed(boxes):
        depth = 1
        for b in _BRACE_RE.finditer(text, m.end(), limit):
            depth += 1 if b.group() == "{" else -1
            if depth == 0:
                return text[m.end() : b.start()]
        limit = m.start()
    return None


def extract_answer(text: str) -> str | None:
    """The final-answer string of a response (see module docstring), or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text[-MAX_SEARCH_CHARS:]
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for rx in _ANSWER_RES:
        last = None
        for last in rx.finditer(text):
            pass
        if last is not None:
            line = last.group(1).strip().splitlines()[0].strip() if last.group(1).strip() else ""
            if line:
                inner = _last_boxed(line)
                return (inner if inner is not None else line).strip()
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return last.group().strip() if last is not None else None


# --------------------------------------------------------------------------- preparation and pre-checks

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_PLAIN_NUMBER_RE = re.compile(rf"{_NUM}|[-+]?\.\d+")
_ASSIGNMENT_RE = re.compile(r"[A-Za-z]\s*=\s*(.+)")
_PLAIN_FRACTION_RE = re.compile(r"([-+]?\d{1,50})\s*/\s*(\d{1,50})|([-+]?)\s*\\[dt]?frac\s*\{\s*(\d{1,50})\s*\}\s*\{\s*(\d{1,50})\s*\}")
# a number, then only words: "9 apples", "18.50 dollars per hour", "42个苹果" (not "2x", "2 and 3", "5 m^2")
_NUMBER_WORDS_RE = re.compile(
    rf"({_NUM}(?:\s*/\s*\d+(?:\.\d+)?)?)(?:\s+[^\W\d_]{{2,}}|\s*[\u2e80-\u9fff\uf900-\ufaff])[^\d\\^_=+*/()\[\]{{}}<>|&%]*"
)
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_COMMAND_ARG_RE = re.compile(r"\\(?:begin|end|operatorname|text\w*|math\w+|mbox)\s*\{[^{}]*\}")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}(?![A-Za-z])")
_MATH_WORDS = frozenset("and sqrt sin cos tan cot sec csc log exp arcsin arccos arctan sinh cosh tanh det mod pmod "
                        "inf infty infinity frac dfrac cdot times pi".split())
_EVAL_AT_PARSE_RE = re.compile(r"binom|\\choose|gcd|lcm")
# plain-text math that Math-Verify's LaTeX parser misreads ("3 pi" = 3*p*i): written as LaTeX
_PLAIN_TO_LATEX = [
    (re.compile(r"(?<![\\A-Za-z])sqrt\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"√\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z])"), r"\\sqrt{\1}"),
    (re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])"), r"\\pi "),
]


def _prepare(ans: str) -> str:
    """The answer as Math-Verify should see it (see module docstring)."""
    s = ans.replace("\\$", "").replace("$", "")
    s = " ".join(s.split())
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
    s = s.rstrip(".。").strip()
    for rx, latex in _PLAIN_TO_LATEX:
        s = rx.sub(latex, s)
    s = s.strip()
    m = _TEXT_RE.fullmatch(s)
    if m:
        s = m.group(1).strip()
    m = _NUMBER_WORDS_RE.fullmatch(s)
    if m:
        s = m.group(1)
    return s


_PROSE = "words, not a math expression"


def _is_prose(s: str) -> bool:
    """Two or more plain words (outside \\text{..}, not LaTeX commands or function names):
    a sentence, not a math answer. Math-Verify would read "three apples" as t*h*r*e*e*a*p*p*l*e*s."""
    words = _WORD_RE.findall(_COMMAND_ARG_RE.sub(" ", s))
    return sum(w.lower() not in _MATH_WORDS for w in words) >= 2


def _nesting(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(0, depth - 1)
    return deepest


def _precheck(s: str) -> str | None:
    """Why a prepared answer is refused before parsing, or None."""
    if len(s) > MAX_ANSWER_CHARS:
        return f"answer too long ({len(s)} chars)"
    deep = _nesting(s)
    if deep > MAX_NESTING:
        return f"nested {deep} deep (limit {MAX_NESTING})"
    if _EVAL_AT_PARSE_RE.search(s) and ("^" in s or "!" in s or re.search(r"\d{5}", s)):
        return "binomial/gcd/lcm of big arguments"
    if _is_prose(s):
        return _PROSE
    return None


# --------------------------------------------------------------------------- cost check of parsed answers

_LOG10_2 = math.log10(2)
_FACTORIAL_LIKE = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma,
                   sympy.RisingFactorial, sympy.FallingFactorial)
_UNEVALUATED = (sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit, sympy.Derivative)


def _log10_abs(x: Any) -> float:
    """Upper bound on log10 of a number's absolute value (for exponents and factorial
    arguments), computed without big-integer work; symbols count as 1."""
    if isinstance(x, MatrixBase) or not isinstance(x, Basic):
        return 0.0
    if x.is_Integer:
        return int(x).bit_length() * _LOG10_2
    if x.is_Rational:
        return (x.p.bit_length() - x.q.bit_length() + 1) * _LOG10_2
    if x.is_Float:
        return (x._mpf_[2] + x._mpf_[3]) * _LOG10_2 if len(x._mpf_) == 4 and x._mpf_[1] else 0.0
    if isinstance(x, sympy.Pow):
        return abs(_log10_abs(x.base)) * 10.0 ** min(_log10_abs(x.exp), 300.0)
    if isinstance(x, _FACTORIAL_LIKE) and x.args:
        n = 10.0 ** min(_log10_abs(x.args[0]), 300.0)
        return n * math.log10(max(n, 10.0))
    if isinstance(x, sympy.Mul):
        return sum(max(_log10_abs(a), 0.0) for a in x.args)
    if x.args:
        return max(_log10_abs(a) for a in x.args) + math.log10(len(x.args))
    return 0.5  # symbols, pi, E, I; oo is not computed with


def _digits(x: Any) -> float:
    """Upper bound on the digits needed to write ``x`` exactly once evaluated (the cost of
    evaluating it); no big-integer work."""
    if isinstance(x, MatrixBase) or not isinstance(x, Basic):
        return 1.0
    if x.is_Integer:
        return max(x.p.bit_length(), 1) * _LOG10_2
    if x.is_Rational:
        return (x.p.bit_length() + x.q.bit_length()) * _LOG10_2
    if x.is_Float:  # exact comparisons may turn it into an integer of its magnitude
        return max(_log10_abs(x), 0.0) + 17
    if isinstance(x, sympy.Pow) and not x.exp.free_symbols:
        e = x.exp
        # b**(p/q) costs about b**p; other exponents by their size
        n = abs(e.p) if e.is_Rational else 10.0 ** min(max(_log10_abs(e), 0.0), 300.0)
        return _digits(x.base) * max(n, 1.0)
    if isinstance(x, _FACTORIAL_LIKE) and x.args:
        return max(_log10_abs(x), 1.0)
    if x.args:
        return sum(_digits(a) for a in x.args)
    return 1.0


def cost_refusal(obj: Any) -> str | None:
    """Why a parsed answer is too costly to compare (see module docstring), or None."""
    stack, nodes = [obj], 0
    while stack:
        x = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"more than {MAX_NODES} expression nodes"
        if isinstance(x, MatrixBase):
            stack.extend(x)
            continue
        if not isinstance(x, Basic):
            continue
        if isinstance(x, _UNEVALUATED):
            return f"unevaluated {type(x).__name__}"
        if isinstance(x, sympy.Pow) and not x.exp.free_symbols:
            if x.base.free_symbols:
                if _log10_abs(x.exp) > math.log10(MAX_SYMBOLIC_EXPONENT):
                    return f"symbolic power with exponent over {MAX_SYMBOLIC_EXPONENT}"
            elif _digits(x) > MAX_POW_DIGITS:
                return f"power with more than {MAX_POW_DIGITS} digits"
        elif isinstance(x, _FACTORIAL_LIKE) and x.args and not x.args[0].free_symbols:
            if _log10_abs(x.args[0]) > math.log10(MAX_FACTORIAL):
                return f"{type(x).__name__} of more than {MAX_FACTORIAL}"
        stack.extend(x.args)
    return None


# --------------------------------------------------------------------------- parsing (Math-Verify)


class _DropSignalTimeoutWarning(logging.Filter):
    # Math-Verify warns once that its signal timeout is off; ours (run_bounded) is on instead
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


# parsed once per process so that ANTLR's prediction cache is warm before answers are timed
_WARM_UP = ["\\frac{1}{2}", "2\\sqrt{3}", "\\{1, 2\\}", "(0, 1]", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "x = 3",
            "(1+2)(3-x)", "\\pi/2", "25\\%"]


@functools.lru_cache(maxsize=1)
def _mv():
    """Math-Verify, imported once (~0.4 s) and its parser warmed up (~0.3 s)."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropSignalTimeoutWarning())
    configs = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]
    for s in _WARM_UP:
        math_verify.parse(f"${s}$", extraction_config=configs, fallback_mode="no_fallback", parsing_timeout=None)
    return math_verify, configs


def _number(s: str) -> sympy.Number:
    """A plain decimal number as Math-Verify's parser makes it (commas out, leading zeros off)."""
    s = s.replace(",", "")
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("+-")
    whole, dot, frac = s.partition(".")
    whole = whole.lstrip("0") or "0"
    # what sympy.Number(str) makes, without its parse_expr (0.7 ms a call)
    return sympy.Float(f"{sign}{whole}.{frac}") if dot else sympy.Integer(int(sign + whole))


def _fast_number(s: str) -> Basic | None:
    """A plain decimal number or integer fraction as the SymPy value Math-Verify's parser
    gives it, without the parser (~0.01 ms instead of 1-6 ms); None for anything else."""
    if _PLAIN_NUMBER_RE.fullmatch(s):
        return _number(s)
    m = _PLAIN_FRACTION_RE.fullmatch(s)
    if m:  # "7/3", "\frac{7}{3}": the value of Math-Verify's parse of \frac{7}{3}
        p, q = (m.group(1), m.group(2)) if m.group(2) else (m.group(3) + m.group(4), m.group(5))
        if int(q):
            return sympy.Rational(int(p), int(q))
    return None


def _parse_unbounded(s: str, gold_is_relation: bool = True) -> tuple[list, str | None]:
    """(parsed objects, refusal reason). Call under run_bounded.

    ``gold_is_relation=False`` lets "x = 5" become 5 without the parser: what Math-Verify's
    verify does with an equation answer when the reference is not an equation.
    """
    fast = _fast_number(s)
    if fast is None and not gold_is_relation:
        m = _ASSIGNMENT_RE.fullmatch(s)
        fast = _fast_number(m.group(1)) if m else None
    if fast is not None:
        return [fast], None
    mv, configs = _mv()
    parsed = mv.parse(f"${s}$", extraction_config=configs, fallback_mode="no_fallback", parsing_timeout=None)
    objs = [p for p in parsed if isinstance(p, (Basic, MatrixBase))]
    for obj in objs:
        why = cost_refusal(obj)
        if why:
            return [], why
    return objs, None


def _compare_unbounded(gold: list, pred: list) -> bool:
    if len(gold) == len(pred) == 1 and isinstance(gold[0], sympy.Rational) and isinstance(pred[0], sympy.Rational):
        # two exact rationals: Math-Verify's verify returns exactly this (structural equality,
        # then numeric equality of the same values), 20x slower
        return bool(gold[0] == pred[0])
    mv, _ = _mv()
    return bool(mv.verify(gold, pred, timeout_seconds=None))


def parse_math(ans: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Basic | MatrixBase | None:
    """Parse an answer string (prepared and checked as in ``verify``); None when it is not a
    math expression, is refused, or takes longer than ``timeout_s`` CPU seconds."""
    if not isinstance(ans, str):
        return None
    _mv()  # import and warm up outside the budget
    s = _prepare(ans)
    if not s or _precheck(s):
        return None
    try:
        done, out = run_bounded(lambda: _parse_unbounded(s), timeout_s)
    except Exception:  # noqa: BLE001 - sympy may raise anything on odd input
        return None
    if not done or not out[0] or out[1]:
        return None
    return out[0][0]


def answers_match(pred: Any, gold: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Math-Verify's equivalence of two parsed answers (``gold`` is the reference); False on timeout."""
    _mv()
    try:
        done, ok = run_bounded(lambda: _compare_unbounded([gold], [pred]), timeout_s)
    except Exception:  # noqa: BLE001
        return False
    return bool(done and ok)


# --------------------------------------------------------------------------- the verifier


class MathVerifier:
    """``verify(problem, response) -> Verdict`` for problems with an exact ``answer``.

    Args:
        timeout_s (`float`, *optional*, defaults to `0.5`): CPU seconds of the calling thread
            for parsing and comparing one answer. A reference (trusted, parsed once) gets
            ``max(2, 4 * timeout_s)``.
        gold_cache (`int`, *optional*, defaults to `65536`): parsed references kept.
        check_steps (`bool`, *optional*, defaults to `False`): a right final answer after a step that
            states wrong bare arithmetic (:func:`step_arithmetic_ok`: "89 - 17 = 76", then a lucky
            "#### 5") fails, detail "right answer after a wrong step". For training data (a chosen
            answer, a verified synth solution, an RM "right" answer), where such an answer teaches
            the wrong step; evaluation keeps the final-answer verdict.
    """

    version = "math-2"

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, gold_cache: int = 65536, check_steps: bool = False):
        self.check_steps = bool(check_steps)
        self.timeout_s = float(timeout_s)
        self.gold_timeout_s = max(2.0, 4 * self.timeout_s)
        self._gold = functools.lru_cache(maxsize=gold_cache)(self._parse_gold)
        _mv()

    def _parse_gold(self, gold_text: str) -> tuple[list | None, str]:
        s = _prepare(gold_text)
        why = _precheck(s) if s else "empty"
        if why:
            return None, why
        try:
            done, out = run_bounded(lambda: _parse_unbounded(s), self.gold_timeout_s)
        except Exception as e:  # noqa: BLE001 - a reference that crashes the parser is a data fault
            return None, f"parser raised {type(e).__name__}"
        if not done:
            return None, f"parsing took over {self.gold_timeout_s}s CPU"
        objs, why = out
        return (objs, "") if objs else (None, why or "no math expression")

    def verify(self, problem: Any, response: str) -> Verdict:
        gold_text = str(problem.answer)
        gold, why = self._gold(gold_text)
        if gold is None:
            # a reference we cannot parse is a data fault, not a wrong response
            return Verdict(False, 0.0, f"unparsable reference answer {gold_text!r} ({why})", error_kind="bad_reference")
        pred_text = extract_answer(response)
        if pred_text is None:
            return Verdict(False, 0.0, "no answer found", formatted=False)
        if len(pred_text) > MAX_ANSWER_CHARS:
            return Verdict(False, 0.0, f"answer too long ({len(pred_text)} chars)", formatted=False)
        s = _prepare(pred_text)
        why = _precheck(s) if s else "empty answer"
        if why == _PROSE:
            return Verdict(False, 0.0, f"unparsable answer {pred_text[:60]!r} ({why})", formatted=False)
        if why:
            return Verdict(False, 0.0, f"answer refused: {why}", formatted=False)

        phase = ["parse"]
        gold_is_relation = any(isinstance(g, (sympy.core.relational.Relational, sympy.And)) for g in gold)

        def parse_and_compare():
            objs, refusal = _parse_unbounded(s, gold_is_relation)
            if refusal or not objs:
                return objs, refusal, False
            phase[0] = "compare"
            return objs, None, _compare_unbounded(gold, objs)

        try:
            done, out = run_bounded(parse_and_compare, self.timeout_s)
        except Exception as e:  # noqa: BLE001 - sympy may raise anything on odd input; the response is untrusted
            return Verdict(False, 0.0, f"{phase[0]} failed: {type(e).__name__}", formatted=phase[0] == "compare")
        if not done:
            return Verdict(False, 0.0, f"timeout: {phase[0]} took over {self.timeout_s}s CPU",
                           formatted=phase[0] == "compare")
        objs, refusal, ok = out
        if refusal:
            return Verdict(False, 0.0, f"answer refused: {refusal}", formatted=False)
        if not objs:
            return Verdict(False, 0.0, f"unparsable answer {pred_text[:60]!r}", formatted=False)
        if ok:
            wrong = first_wrong_step(response) if self.check_steps else None
            if wrong is not None:
                return Verdict(False, 0.0, f"{WRONG_STEP}: {wrong[:60]!r}")
            return Verdict(True, 1.0, "ok")
        return Verdict(False, 0.0, f"wrong: got {pred_text[:60]!r}, want {gold_text!r}")


# --------------------------------------------------------------------------- partial checks (DFS pruning)

_STEP_EQ_RE = re.compile(r"(?<![\w.])((?:\d+(?:\.\d+)?\s*[-+*/×÷x]\s*)+\d+(?:\.\d+)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)(\s*%)?(?![\d.]*\s*[-+*/×÷]\s*\d)")
# an operator just before a match ("40 questions x 40/100 = 16"): the match is the tail of a longer
# expression whose start is words, not numbers; nothing to check
_FRAGMENT_RE = re.compile(r"(?:[-+*/×÷]|(?<![A-Za-z])x)\s*$")
# "66 / 16 rounded up is 5", "66 / 16 向上取整是 5" (and down): a division stated with its rounding
_ROUNDED_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*"
                         r"(rounded up is|rounds up to|向上取整是|向上取整为|rounded down is|rounds down to|向下取整是|向下取整为)\s*(\d+)")
_TIGHT_FRACTION_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)(?![\d.])")


def _arith(node: ast.AST) -> sympy.Rational:
    """Exact value of bare arithmetic (numbers, unary minus, + - * /); never ``eval``."""
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        # repr() of a float is the shortest round-tripping decimal, so 0.1 -> Rational(1, 10)
        return sympy.Integer(node.value) if isinstance(node.value, int) else sympy.Rational(repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _arith(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise ZeroDivisionError
        return a / b
    raise ValueError(f"unsupported syntax {type(node).__name__}")


def _lhs_values(lhs: str) -> list[sympy.Rational]:
    """The values a step's left side can mean: as written (``1 / 1/4`` = 1/4), and with each
    unspaced ``a/b`` read as one fraction (``1 / 1/4`` = 4, ``10÷1/2`` = 20)."""
    readings = {lhs, _TIGHT_FRACTION_RE.sub(r"(\1/\2)", lhs)}
    out = []
    for text in readings:
        expr = text.replace("×", "*").replace("÷", "/").replace("x", "*")
        try:
            v = _arith(ast.parse(expr, mode="eval"))
        except (SyntaxError, ValueError, TypeError, ZeroDivisionError, RecursionError):
            continue
        if v.is_Rational:
            out.append(v)
    return out


def _value_matches(lv: sympy.Rational, rhs: str, percent: bool) -> bool:
    rv = sympy.Rational(rhs)
    if percent:
        lv = lv * 100
    if lv == rv:
        return True
    if "." in rhs:  # a rounded decimal result ("10 / 3 = 3.33")
        return math.isclose(float(lv), float(rv), abs_tol=0.5 * 10 ** -len(rhs.split(".")[1]))
    # a whole count from a fractional value, rounded either way ("899.5 / 1.15 = 782 crackers",
    # "90 / 12 = 7 sheets"); an integer value must be stated exactly ("89 - 17 = 76" is wrong)
    return not lv.is_integer and math.floor(lv) <= rv <= math.ceil(lv)


def step_arithmetic_ok(step: str) -> bool:
    """False when a reasoning step states a pure-number equation that is wrong ("3 * 4 = 13").

    Only bare arithmetic (digits and + - * / x ÷) is checked, and only where no reading of it is
    right: an unspaced ``a/b`` may be one fraction, a ``%`` result is a hundredth, a whole-number
    result of a fractional value may be rounded either way, a decimal result to its digits, and a
    match that continues an expression begun in words is skipped. A division stated with its
    rounding ("66 / 16 rounded up is 5", "向上取整是") must round that way. Anything else counts as ok, so
    this prunes only provably wrong steps (the worked solutions of the task sources all pass).
    """
    for m in _ROUNDED_RE.finditer(step):
        a, b = sympy.Rational(m.group(1)), sympy.Rational(m.group(2))
        if b != 0 and not _FRAGMENT_RE.search(step[:m.start()]):
            up = "up" in m.group(3) or "向上" in m.group(3)
            if int(m.group(4)) != (math.ceil(a / b) if up else math.floor(a / b)):
                return False
    for m in _STEP_EQ_RE.finditer(step):
        if _FRAGMENT_RE.search(step[:m.start()]):
            continue
        rhs = m.group(2).replace(",", "")
        values = _lhs_values(m.group(1))
        try:
            if values and not any(_value_matches(v, rhs, bool(m.group(3))) for v in values):
                return False
        except (ValueError, TypeError):
            continue
    return True


WRONG_STEP = "right answer after a wrong step"  # the detail of such a verdict under check_steps


def first_wrong_step(response: str) -> str | None:
    """The first line of ``response`` that :func:`step_arithmetic_ok` refuses, or None."""
    return next((line.strip() for line in response.splitlines() if not step_arithmetic_ok(line)), None)
