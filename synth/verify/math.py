"""Math verifier: extract the final answer from a response, compare it with the reference.

Extraction (first rule that matches wins):
  1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched),
  2. the text after the last ``####`` (GSM8K style),
  3. the text after the last "Answer:" / "the answer is" / "答案是" / "答案：" / "答：",
  4. the last number in the response.

Comparison: both sides are normalised (``$``, thousands commas, ``\\text{..}`` units,
trailing words such as "apples", "x =" prefixes, degree/percent signs removed; LaTeX
``\\frac``, ``\\sqrt``, ``\\cdot``, ``^``, ``\\pi`` converted) and parsed into SymPy by a
small AST walker, never ``eval`` (the response is untrusted). Numbers compare exactly as
rationals (``0.5 == 1/2``, ``0.33 != 1/3``); irrational or symbolic answers compare by
``simplify(a - b) == 0`` with a numeric cross-check. Answers that are too long, or powers
too large to evaluate quickly (``9^9^9``), fail with a reason instead of hanging.

Run the table tests: ``python -m pytest -q tests/synth/test_verify_math.py``.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

import sympy

from synth.verify import Verdict

MAX_ANSWER_CHARS = 200  # longer "answers" are not answers; also bounds parse cost
MAX_POW_DIGITS = 2000  # refuse a**b whose result would have more digits than this

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_RES = [
    re.compile(r"####\s*(.+)"),
    re.compile(r"\banswer\b\s*(?:is\s*[:：]?|[:：])\s*(.+)", re.IGNORECASE),
    re.compile(r"(?:答案是|答案为|答案[:：]|答[:：])\s*(.+)"),
]
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with nested braces matched; None if absent/unclosed."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def extract_answer(text: str) -> str | None:
    """The final-answer string of a response (see module docstring), or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for rx in _ANSWER_RES:
        hits = list(rx.finditer(text))
        if hits:
            line = hits[-1].group(1).strip().splitlines()[0].strip() if hits[-1].group(1).strip() else ""
            if line:
                inner = _last_boxed(line)
                return (inner if inner is not None else line).strip()
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].strip() if numbers else None


# --------------------------------------------------------------------------- normalisation


def _replace_latex_group(s: str, command: str, fmt) -> str:
    """Replace ``\\command{a}{b}``-style groups (nested braces ok) using fmt(*args)."""
    nargs = fmt.__code__.co_argcount
    while True:
        idx = s.find(command)
        if idx < 0:
            return s
        pos = idx + len(command)
        args = []
        for _ in range(nargs):
            while pos < len(s) and s[pos] == " ":
                pos += 1
            if pos < len(s) and s[pos] == "{":
                depth, j = 1, pos + 1
                while j < len(s) and depth:
                    depth += {"{": 1, "}": -1}.get(s[j], 0)
                    j += 1
                if depth:
                    raise ValueError("unbalanced braces")
                args.append(s[pos + 1 : j - 1])
                pos = j
            elif pos < len(s):  # \frac12 style: single-character arguments
                args.append(s[pos])
                pos += 1
            else:
                raise ValueError(f"{command} without argument")
        s = s[:idx] + fmt(*args) + s[pos:]


def normalize(ans: str) -> str:
    """Turn an answer string into a Python-syntax math expression string (may still fail to parse)."""
    s = ans.strip()
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r" \1 ", s)  # keep the text; unit words drop below
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    for tok in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _replace_latex_group(s, "\\frac", lambda a, b: f"(({a})/({b}))")
    s = re.sub(r"\\sqrt\s*\[([^\]]+)\]\s*\{([^{}]*)\}", r"((\2)**(1/(\1)))", s)
    s = _replace_latex_group(s, "\\sqrt", lambda a: f"sqrt({a})")
    s = (
        s.replace("\\cdot", "*").replace("\\times", "*").replace("×", "*").replace("\\div", "/")
        .replace("÷", "/").replace("−", "-").replace("√", "sqrt").replace("\\pi", "pi").replace("π", "pi")
    )
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,000,000 -> 1000000
    s = re.sub(r"^\s*[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = s.strip().rstrip(".。").strip()
    return s


# --------------------------------------------------------------------------- safe parsing


class _Unsafe(ValueError):
    pass


_FUNCS = {"sqrt": sympy.sqrt}
_CONSTS = {"pi": sympy.pi}


def _digits(x: sympy.Expr) -> float:
    """Rough log10 magnitude of a number (0 for non-numbers)."""
    try:
        v = abs(sympy.N(x, 5))
        return float(sympy.log(v, 10)) if v > 1 else 0.0
    except (TypeError, ValueError):
        return 0.0


def _build(node: ast.AST) -> sympy.Expr:
    if isinstance(node, ast.Expression):
        return _build(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        # repr() of a float is the shortest round-tripping decimal, so 0.1 -> Rational(1, 10)
        return sympy.Integer(node.value) if isinstance(node.value, int) else sympy.Rational(repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _build(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _build(node.left), _build(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise _Unsafe("division by zero")
            return a / b
        if isinstance(node.op, ast.Pow):
            if not b.is_number:
                return a**b
            if abs(float(b)) > 1000 or _digits(a) * abs(float(b)) > MAX_POW_DIGITS:
                raise _Unsafe("power too large")
            return a**b
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and len(node.args) == 1:
        return _FUNCS[node.func.id](_build(node.args[0]))
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        if len(node.id) == 1 and node.id.isalpha():
            return sympy.Symbol(node.id)
    raise _Unsafe(f"unsupported syntax {type(node).__name__}")


def _implicit_mul(s: str) -> str:
    # "2sqrt(2)", "3pi", "2(x+1)", ")(" -> explicit products
    s = re.sub(r"(\d|\))\s*(?=(sqrt|pi|[a-zA-Z(]))", r"\1*", s)
    return s


def parse_math(ans: str) -> sympy.Expr | None:
    """Parse an answer string into a SymPy expression; None when it is not a math expression."""
    if ans is None or len(ans) > MAX_ANSWER_CHARS:
        return None
    try:
        s = normalize(ans)
    except ValueError:
        return None
    candidates = [s]
    # units/words after the number ("9 apples", "18.50 dollars per hour"): keep the leading number
    m = re.match(r"^\s*(-?\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)(?:\s+|$)", s)
    if m and m.group(1) != s:
        candidates.append(m.group(1))
    for cand in candidates:
        if not cand:
            continue
        try:
            tree = ast.parse(_implicit_mul(cand), mode="eval")
            return _build(tree)
        except (SyntaxError, ValueError, TypeError, ZeroDivisionError, RecursionError, OverflowError, MemoryError):
            continue
    return None


def answers_match(pred: sympy.Expr, gold: sympy.Expr) -> bool:
    """Exact rational equality for numbers, simplify-based equality otherwise."""
    if pred.is_Rational and gold.is_Rational:
        return bool(pred == gold)
    diff = pred - gold
    if diff.free_symbols:
        if sympy.count_ops(diff) > 60:
            return False
        return bool(sympy.simplify(diff) == 0)
    try:
        if sympy.simplify(diff) == 0:
            return True
        # numeric cross-check for forms simplify misses (nested radicals)
        return abs(complex(sympy.N(diff, 30))) < 1e-12 * max(1.0, abs(complex(sympy.N(gold, 30))))
    except (TypeError, ValueError, OverflowError):
        return False


class MathVerifier:
    """``verify(problem, response) -> Verdict`` for problems with an exact ``answer``."""

    version = "math-1"

    def verify(self, problem: Any, response: str) -> Verdict:
        gold_text = str(problem.answer)
        gold = parse_math(gold_text)
        if gold is None:
            # a reference we cannot parse is a data fault, not a wrong response
            return Verdict(False, 0.0, f"unparsable reference answer {gold_text!r}", error_kind="bad_reference")
        pred_text = extract_answer(response)
        if pred_text is None:
            return Verdict(False, 0.0, "no answer found", formatted=False)
        if len(pred_text) > MAX_ANSWER_CHARS:
            return Verdict(False, 0.0, f"answer too long ({len(pred_text)} chars)", formatted=False)
        pred = parse_math(pred_text)
        if pred is None:
            return Verdict(False, 0.0, f"unparsable answer {pred_text[:60]!r}", formatted=False)
        try:
            ok = answers_match(pred, gold)
        except Exception as e:  # noqa: BLE001 - sympy may raise anything on odd input; the response is untrusted
            return Verdict(False, 0.0, f"compare failed: {type(e).__name__}")
        if ok:
            return Verdict(True, 1.0, "ok")
        return Verdict(False, 0.0, f"wrong: got {pred_text[:60]!r}, want {gold_text!r}")


# --------------------------------------------------------------------------- partial checks (DFS pruning)

_STEP_EQ_RE = re.compile(r"(?<![\w.])((?:\d+(?:\.\d+)?\s*[-+*/×÷x]\s*)+\d+(?:\.\d+)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)(?![\d.]*\s*[-+*/×÷]\s*\d)")


def step_arithmetic_ok(step: str) -> bool:
    """False when a reasoning step states a pure-number equation that is wrong ("3 * 4 = 13").

    Only bare arithmetic (digits and + - * / x) is checked; anything else counts as ok,
    so this prunes only provably wrong steps.
    """
    for m in _STEP_EQ_RE.finditer(step):
        lhs = m.group(1).replace("×", "*").replace("÷", "/").replace("x", "*")
        rhs = m.group(2).replace(",", "")
        try:
            lv = _build(ast.parse(lhs, mode="eval"))
            rv = sympy.Rational(rhs)
        except (SyntaxError, ValueError, TypeError, _Unsafe, ZeroDivisionError):
            continue
        if lv.is_Rational and lv != rv:
            # allow a rounded decimal result ("10 / 3 = 3.33")
            if "." in rhs and math.isclose(float(lv), float(rv), abs_tol=0.5 * 10 ** -len(rhs.split(".")[1])):
                continue
            return False
    return True
