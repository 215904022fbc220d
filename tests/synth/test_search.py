"""MCTS and DFS with a scripted policy: they find the verified solution, keep consistent
visit/value statistics, respect budgets and pruning, and are deterministic."""

import math

import pytest

from alignment.tasks.problems import load_problems
from alignment.tasks.verify import get_verifier
from synth.search import SearchConfig, dfs_search, mcts_search
from synth.search.mcts import puct_select
from synth.search.scripted_sampler import ScriptedSampler
from synth.search.tree import Node

MATH = get_verifier("math")


@pytest.fixture(scope="module")
def problems():
    return load_problems("templates", "train", 6, seed=0) + load_problems("gsm_symbolic", "train", 2, seed=0)


def check_statistics(node: Node):
    """visits = direct backups + children's visits; value_sum likewise; values in [0, 1]."""
    kids = [c for c in node.children if not c.pruned]
    assert node.visits >= sum(c.visits for c in kids)
    assert node.value_sum >= sum(c.value_sum for c in kids) - 1e-9
    assert 0.0 <= node.value <= 1.0
    if node.parent is None:  # the root is never evaluated itself
        assert node.visits == sum(c.visits for c in kids)
        assert math.isclose(node.value_sum, sum(c.value_sum for c in kids))
    for c in kids:
        check_statistics(c)


def test_mcts_finds_the_verified_solution(problems):
    sampler = ScriptedSampler(problems, p_correct=0.8)
    cfg = SearchConfig(num_children=3, num_simulations=12)
    solved = 0
    for p in problems:
        res = mcts_search(p, sampler, MATH, cfg, seed=0)
        check_statistics(res.root)
        judged = [c for c in res.candidates if c.error_kind is None]
        # every verified response was backed up once, plus cached re-visits of terminal nodes
        assert res.root.visits >= len(judged) > 0
        assert res.stats["simulations"] <= cfg.num_simulations
        passing = [c for c in res.candidates if c.passed]
        solved += bool(passing)
        for c in passing:
            assert MATH.verify(p, c.text).passed
    assert solved >= len(problems) - 2  # a root whose k samples are all wrong is never re-widened


def test_mcts_with_a_perfect_policy_solves_in_one_simulation(problems):
    p = problems[0]
    res = mcts_search(p, ScriptedSampler([p], p_correct=1.0), MATH, SearchConfig(num_children=2, num_simulations=1), seed=0)
    assert len(res.root.children) == 1  # k identical samples merge into one child
    assert res.root.children[0].prior == pytest.approx(1.0)
    assert res.root.value == 1.0 and any(c.passed for c in res.candidates)


def test_mcts_with_a_hopeless_policy_scores_zero(problems):
    p = problems[1]
    res = mcts_search(p, ScriptedSampler([p], p_correct=0.0), MATH, SearchConfig(num_children=3, num_simulations=6), seed=0)
    assert res.root.visits > 0 and res.root.value == 0.0 and not any(c.passed for c in res.candidates)


def test_puct_prefers_prior_then_value():
    root = Node(id=0, step="", depth=0, visits=10)
    a = Node(id=1, step="a", depth=1, prior=0.8, parent=root, visits=1, value_sum=0.0)
    b = Node(id=2, step="b", depth=1, prior=0.2, parent=root, visits=1, value_sum=0.0)
    root.children = [a, b]
    assert puct_select(root, c_puct=0.5) is a  # equal values: the prior decides
    b.value_sum = 1.0
    assert puct_select(root, c_puct=0.5) is b  # a better value beats the prior
    assert puct_select(root, c_puct=1.5) is a  # ... unless exploration is weighted up
    a.visits, b.visits = 1, 50
    b.value_sum = 25.0
    assert puct_select(root, c_puct=0.5) is a  # exploration bonus of the rarely visited child


def test_budgets_are_respected(problems):
    p = problems[2]
    sampler = ScriptedSampler([p], p_correct=0.8)
    res = mcts_search(p, sampler, MATH, SearchConfig(num_children=3, num_simulations=50, max_tokens=60), seed=0)
    assert res.stats["tokens"] < 60 + 3 * 96  # stops after the call that crossed the budget
    res = mcts_search(p, sampler, MATH, SearchConfig(num_children=3, num_simulations=50, stop_after_solutions=1), seed=0)
    assert {c.text for c in res.candidates if c.passed} and res.stats["simulations"] < 50  # stopped early
    res = mcts_search(p, sampler, MATH, SearchConfig(num_children=2, num_simulations=20, max_depth=1), seed=0)
    assert max(n.depth for n in res.nodes()) <= 1


def test_dfs_finds_solution_and_prunes(problems):
    sampler = ScriptedSampler(problems, p_correct=0.7)
    cfg = SearchConfig(algorithm="dfs", num_children=3, num_simulations=20)
    solved, pruned = 0, 0
    for p in problems:
        res = dfs_search(p, sampler, MATH, cfg, seed=0)
        check_statistics(res.root)
        solved += any(c.passed for c in res.candidates)
        pruned += res.stats["pruned_check"]
        for n in res.nodes():
            if n.pruned == "partial_check":
                assert n.visits == 0  # pruned states are never verified or backed up
    assert solved >= len(problems) - 2
    assert pruned > 0  # corrupted arithmetic ("3 * 4 = 13") was caught before verifying


def test_dfs_depth_limit_rolls_out(problems):
    p = problems[3]
    res = dfs_search(p, ScriptedSampler([p], p_correct=1.0), MATH, SearchConfig(algorithm="dfs", num_children=2, max_depth=1), seed=0)
    assert res.stats["depth_rollouts"] >= 1 and max(n.depth for n in res.nodes()) <= 1
    assert any(c.passed for c in res.candidates)  # the rollout completed the solution


def test_dfs_drops_duplicate_states(problems):
    p = problems[4]
    res = dfs_search(p, ScriptedSampler([p], p_correct=1.0), MATH, SearchConfig(algorithm="dfs", num_children=4, num_simulations=10), seed=0)
    texts = ["\n".join(n.steps()) for n in res.nodes() if not n.pruned]
    assert len(texts) == len(set(texts))


@pytest.mark.parametrize("search", [mcts_search, dfs_search])
def test_search_is_deterministic(problems, search):
    p = problems[5]
    cfg = SearchConfig(algorithm="mcts" if search is mcts_search else "dfs", num_children=3, num_simulations=8)
    a = search(p, ScriptedSampler([p], p_correct=0.5), MATH, cfg, seed=7)
    b = search(p, ScriptedSampler([p], p_correct=0.5), MATH, cfg, seed=7)
    c = search(p, ScriptedSampler([p], p_correct=0.5), MATH, cfg, seed=8)
    assert a.root.to_dict() == b.root.to_dict()
    assert [x.text for x in a.candidates] == [x.text for x in b.candidates]
    assert a.root.to_dict() != c.root.to_dict()


def test_infra_faults_are_not_backed_up(problems):
    from alignment.tasks.verify import Verdict

    class Broken:
        def verify(self, problem, response):
            return Verdict(False, 0.0, "sandbox fault", error_kind="infra")

    p = problems[0]
    res = mcts_search(p, ScriptedSampler([p], p_correct=0.5), Broken(), SearchConfig(num_children=2, num_simulations=3), seed=0)
    assert res.root.visits == 0 and res.stats["infra_faults"] == len(res.candidates) > 0


def test_code_search_uses_the_sandbox():
    ps = load_problems("codeio", "train", 1, seed=0)
    res = mcts_search(ps[0], ScriptedSampler(ps, p_correct=0.6), get_verifier("code"), SearchConfig(num_children=2, num_simulations=2), seed=0)
    check_statistics(res.root)
    assert any(c.passed for c in res.candidates) and res.root.visits > 0


def test_lockstep_batches_calls_and_keeps_results_fixed(problems):
    from synth.search.lockstep import search_many

    class Counting(ScriptedSampler):
        def generate(self, prompts, n, params):
            self.sizes = getattr(self, "sizes", []) + [len(prompts)]
            return super().generate(prompts, n, params)

    cfg = SearchConfig(num_children=2, num_simulations=4)

    def run(sampler):
        return search_many(problems, sampler, lambda p, s: mcts_search(p, s, MATH, cfg, seed=1))

    a_sampler, b_sampler = Counting(problems, p_correct=0.7), Counting(problems, p_correct=0.7)
    a, b = run(a_sampler), run(b_sampler)
    assert [r.root.to_dict() for r in a] == [r.root.to_dict() for r in b]  # thread scheduling does not matter
    assert max(a_sampler.sizes) > 1  # calls of different problems were merged
    assert len(a_sampler.sizes) < sum(r.stats["sampler_calls"] for r in a)
    for r in a:
        check_statistics(r.root)
