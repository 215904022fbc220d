"""alignment/stats.py: Wilson intervals and McNemar's exact test, checked against closed forms."""

import math
import random

import pytest

from alignment.stats import accuracy_ci, mcnemar


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (37, 200), (200, 200), (512, 1000)])
def test_accuracy_ci_is_wilson(k, n):
    lo, hi = accuracy_ci(k, n)
    want = wilson(k, n)
    assert lo == pytest.approx(max(0.0, want[0]), abs=1e-9) and hi == pytest.approx(min(1.0, want[1]), abs=1e-9)
    assert lo <= k / n <= hi


def test_accuracy_ci_narrows_with_n_and_rejects_bad_counts():
    assert accuracy_ci(0, 0) == (0.0, 1.0)
    w = [accuracy_ci(n // 4, n) for n in (40, 400, 4000)]
    assert w[0][1] - w[0][0] > w[1][1] - w[1][0] > w[2][1] - w[2][0]
    with pytest.raises(ValueError, match="outside"):
        accuracy_ci(11, 10)


def test_mcnemar_exact_p_value():
    # 6 gained, 1 lost: two-sided binomial p = 2 * P(X <= 1 | 7, 1/2) = 2 * 8/128
    before = [False] * 6 + [True] + [True] * 3 + [False] * 5
    after = [True] * 6 + [False] + [True] * 3 + [False] * 5
    res = mcnemar(before, after)
    assert (res.n, res.gained, res.lost) == (15, 6, 1)
    assert res.p_value == pytest.approx(0.125)
    assert res.delta == pytest.approx(5 / 15)
    assert mcnemar(before, before).p_value == 1.0 and mcnemar(before, before).delta == 0.0
    with pytest.raises(ValueError, match="paired"):
        mcnemar([True], [True, False])


def test_mcnemar_detects_a_real_gain_and_not_noise():
    rng = random.Random()
    base = [rng.random() < 0.3 for _ in range(1000)]
    better = [b or rng.random() < 0.15 for b in base]  # ~10 points gained, nothing lost
    assert mcnemar(base, better).p_value < 1e-6
    shuffled = [rng.random() < 0.3 for _ in range(1000)]  # independent re-draw at the same rate
    noise = mcnemar(base, shuffled)
    assert abs(noise.delta) < 0.08
