"""Pair construction table (alignment/train/pair_rule.py): ties, gaps, verifier overrides, rules.

Run: python -m pytest -q tests/train/test_pair_rule.py
"""

import random

import pytest

from alignment.train.pair_rule import Candidate, Drop, Pair, PairRule, PairStats, select_pair

C = Candidate
P, F, U = True, False, None  # verdicts: passed, failed, unknown (no known answer)

# (id, candidates, rule kwargs, expected (chosen, rejected, why) or drop reason)
CASES = [
    ("best vs worst", [C("a", 0.1), C("b", 2.0), C("c", -1.0), C("d", 0.5)], {}, (1, 2, "reward")),
    ("all tied -> dropped", [C("a", 1.0), C("b", 1.0), C("c", 1.0)], {}, "tie"),
    ("tie dropped even with min_gap 0", [C("a", 1.0), C("b", 1.0)], {"min_gap": 0.0}, "tie"),
    ("identical texts are a tie", [C("same", 1.0), C("same", 1.0)], {"min_gap": 0.0}, "tie"),
    ("gap below min_gap", [C("a", 1.0), C("b", 0.8)], {"min_gap": 0.5}, "small_gap"),
    ("gap exactly min_gap kept", [C("a", 1.0), C("b", 0.5)], {"min_gap": 0.5}, (0, 1, "reward")),
    ("tiny gap kept with min_gap 0", [C("a", 1.0), C("b", 0.999)], {"min_gap": 0.0}, (0, 1, "reward")),
    ("one candidate", [C("a", 1.0)], {}, "too_few"),
    ("equal best: lowest index", [C("a", 2.0), C("b", 2.0), C("c", 0.0)], {}, (0, 2, "reward")),
    # verifier overrides (veto, the default)
    ("veto: failed never chosen", [C("a", 5.0, F), C("b", 1.0, P), C("c", 0.0, P)], {}, (1, 0, "verifier")),
    ("veto: passed beats failed despite small RM gap",
     [C("a", 1.0, P), C("b", 0.9, F)], {"min_gap": 0.5}, (0, 1, "verifier")),
    ("veto: passed beats failed despite negative RM gap",
     [C("a", -3.0, P), C("b", 3.0, F)], {}, (0, 1, "verifier")),
    ("veto: all failed -> dropped", [C("a", 3.0, F), C("b", 0.0, F)], {}, "all_failed"),
    ("veto: all passed -> reward gap decides", [C("a", 3.0, P), C("b", 0.0, P)], {}, (0, 1, "reward")),
    ("veto: all passed, small gap", [C("a", 3.0, P), C("b", 2.9, P)], {}, "small_gap"),
    ("veto: rejected is the lowest-reward failed one",
     [C("a", 2.0, P), C("b", -5.0, P), C("c", 1.0, F), C("d", 0.0, F)], {}, (0, 3, "verifier")),
    ("veto: unknown verdicts act like reward only", [C("a", 1.0, U), C("b", 0.0, U)], {}, (0, 1, "reward")),
    # other combinations
    ("ignore: failed can be chosen", [C("a", 5.0, F), C("b", 1.0, P)], {"verifier": "ignore"}, (0, 1, "reward")),
    ("bonus: verdict adds to the score",
     [C("a", 1.5, F), C("b", 1.0, P), C("c", 0.0, F)], {"verifier": "bonus", "verifier_bonus": 1.0}, (1, 2, "reward")),
    ("bonus: RM can outvote the verifier",
     [C("a", 9.0, F), C("b", 1.0, P)], {"verifier": "bonus", "verifier_bonus": 1.0}, (0, 1, "reward")),
    ("bonus: bonus closes the gap to a tie",
     [C("a", 1.0, F), C("b", 0.0, P)], {"verifier": "bonus", "verifier_bonus": 1.0}, "tie"),
]


@pytest.mark.parametrize("cands,kwargs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pair_table(cands, kwargs, expected):
    result = select_pair(cands, PairRule(**kwargs), random.Random(0))
    if isinstance(expected, str):
        assert isinstance(result, Drop), result
        assert result.reason == expected
    else:
        assert isinstance(result, Pair), result
        assert (result.chosen, result.rejected, result.why) == expected


def test_best_random_draws_only_among_candidates_that_clear_the_gap():
    cands = [C("best", 3.0), C("close", 2.9), C("x", 1.0), C("y", 0.0), C("z", -1.0)]
    rule = PairRule(rule="best_random", min_gap=0.5)
    rng = random.Random(123)
    seen = {select_pair(cands, rule, rng).rejected for _ in range(200)}
    assert seen == {2, 3, 4}  # never the chosen itself, never "close" (gap 0.1)
    assert all(select_pair(cands, rule, random.Random(7)).rejected == select_pair(cands, rule, random.Random(7)).rejected
               for _ in range(3))  # seeded -> reproducible


def test_best_random_drops_when_nothing_clears_the_gap():
    result = select_pair([C("a", 1.0), C("b", 0.9), C("c", 0.8)], PairRule(rule="best_random", min_gap=0.5))
    assert isinstance(result, Drop) and result.reason == "small_gap"


def test_margin_and_stats():
    stats = PairStats()
    for cands in ([C("a", 2.0), C("b", 0.0)], [C("a", 1.0), C("b", 1.0)], [C("a", 1.0, P), C("b", 1.2, F)]):
        stats.add(select_pair(cands, PairRule()))
    m = stats.as_metrics()
    assert (m["pairs"], m["dropped_tie"], m["pairs_by_verifier"]) == (2, 1, 1)
    assert m["pair_margin_mean"] == pytest.approx((2.0 + -0.2) / 2)


@pytest.mark.parametrize("bad", [{"rule": "best_median"}, {"verifier": "trust"}, {"min_gap": -1.0}])
def test_bad_rule_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PairRule(**bad)


def test_non_finite_reward_is_an_error():
    with pytest.raises(ValueError, match="candidate 1"):
        select_pair([C("a", 1.0), C("b", float("nan"))], PairRule())


def test_unsafe_candidate_is_never_chosen_and_is_rejected_first():
    """RAISE reward engineering: the guard verdict overrides reward and verifier."""
    cands = [Candidate("unsafe but loved by the RM", 9.0, True, unsafe=True),
             Candidate("fine", 1.0, True), Candidate("meh", 0.9, True)]
    for mode in ("veto", "bonus", "ignore"):
        pair = select_pair(cands, PairRule(verifier=mode, min_gap=0.5))
        assert (pair.chosen, pair.rejected, pair.why) == (1, 0, "safety")
    assert select_pair([Candidate("a", 1.0, unsafe=True), Candidate("b", 0.0, unsafe=True)], PairRule()).reason == "all_failed"


def test_several_pairs_per_prompt_pair_best_with_worst_without_reusing_a_candidate():
    from alignment.train.pair_rule import select_pairs

    # passed: rewards 3, 2, 1 (indices 0-2); failed: rewards 0.5, -1, -2 (3-5); one duplicate of 5's text
    cands = [Candidate("a", 3.0, True), Candidate("b", 2.0, True), Candidate("c", 1.0, True),
             Candidate("x", 0.5, False), Candidate("y", -1.0, False), Candidate("z", -2.0, False)]
    pairs = select_pairs(cands, PairRule(per_prompt=5))
    assert [(p.chosen, p.rejected) for p in pairs] == [(0, 5), (1, 4), (2, 3)]  # best-worst, then the next ones
    assert all(p.why == "verifier" for p in pairs)
    assert len(select_pairs(cands, PairRule(per_prompt=2))) == 2
    assert [(p.chosen, p.rejected) for p in select_pairs(cands, PairRule())] == [(0, 5)]  # the report's one pair
    # a pair repeating the texts of an earlier one is skipped
    dup = cands + [Candidate("a", 2.5, True), Candidate("z", -3.0, False)]
    assert [(dup[p.chosen].text, dup[p.rejected].text) for p in select_pairs(dup, PairRule(per_prompt=4))] == [
        ("a", "z"), ("b", "y"), ("c", "x")]
    # no pair at all: the first pair's drop reason
    assert select_pairs([Candidate("x", 1.0, False), Candidate("y", 0.0, False)], PairRule(per_prompt=3)) == Drop("all_failed")
    stats = PairStats()
    stats.add(pairs)
    stats.add(Drop("all_failed"))
    m = stats.as_metrics()
    assert (m["pairs"], m["prompts_with_pairs"], m["pairs_per_prompt"], m["dropped_all_failed"]) == (3, 1, 1.5, 1)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_per_prompt_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="per_prompt"):
        PairRule(per_prompt=bad)
