"""Statistics for held-out evaluation: binomial intervals and paired tests between checkpoints.

A stage "makes the model better" only when the gain is larger than what re-drawing the eval set
would move: every accuracy is reported with a 95% Wilson interval, and two checkpoints scored on
the *same* problems are compared with McNemar's exact test (a two-sided binomial test on the
discordant problems: solved by one checkpoint only), which is far more sensitive than comparing
two intervals. Both come from scipy.

    from alignment.stats import accuracy_ci, mcnemar
    lo, hi = accuracy_ci(correct=37, n=200)
    res = mcnemar(before=[True, False, ...], after=[True, True, ...])   # res.p_value, res.delta
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def accuracy_ci(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (``(0.0, 1.0)`` when ``n == 0``)."""
    from scipy.stats import binomtest

    if n <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= n:
        raise ValueError(f"accuracy_ci: correct={correct} outside [0, n={n}]")
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class PairedResult:
    """``after`` vs ``before`` on the same items: ``gained`` (wrong -> right), ``lost`` (right -> wrong),
    ``delta`` = (gained - lost) / n, and McNemar's exact two-sided ``p_value``."""

    n: int
    gained: int
    lost: int
    delta: float
    p_value: float


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> PairedResult:
    """McNemar's exact test on paired binary outcomes (item i scored by both checkpoints)."""
    from scipy.stats import binomtest

    if len(before) != len(after):
        raise ValueError(f"mcnemar: {len(before)} vs {len(after)} outcomes; the items must be paired")
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    n = len(before)
    p = 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)
    return PairedResult(n=n, gained=gained, lost=lost, delta=(gained - lost) / n if n else 0.0, p_value=p)
