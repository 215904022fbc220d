"""MCTS over solution steps with a Sampler as policy and a verifier as reward.

One simulation:
  1. select: from the root, follow the child maximising PUCT
         Q(c) + c_puct * P(c) * sqrt(N(parent)) / (1 + N(c)),
     with Q the mean verified reward below c and P the policy prior (tree.py);
  2. expand: sample k next steps of the reached leaf (one sampler call, duplicates merged);
  3. evaluate: every new child is verified directly if terminal, else rolled out to a
     full response (one batched sampler call) and the rollout verified;
  4. backup: each child's reward is added to the visit count and value of every node on
     its path, so N(node) = number of rewards below it and Q = their mean.
A reached terminal node is re-scored from its cached verdict (no new sampling). A leaf at
``max_depth`` is not expanded; it gets a rollout instead. Infrastructure faults (verdict
``error_kind``) are counted and not backed up. Budgets: simulations, tokens, wall time,
and ``stop_after_solutions``.

    from synth.search.mcts import mcts_search
    result = mcts_search(problem, sampler, get_verifier(problem.kind), SearchConfig(), seed=0)
    result.root.visits, [c.text for c in result.candidates if c.passed]
"""

from __future__ import annotations

import math
import time
from typing import Callable

from alignment.sampling.base import Sampler
from alignment.tasks.format import plain_render
from alignment.tasks.problems import Problem
from synth.search.tree import Node, SearchConfig, SearchResult, StepPolicy


def puct_select(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score (ties -> the earlier child, for determinism)."""
    sqrt_n = math.sqrt(max(1, node.visits))
    best, best_score = None, -math.inf
    for child in node.children:
        if child.pruned:
            continue
        score = child.value + c_puct * child.prior * sqrt_n / (1 + child.visits)
        if score > best_score:
            best, best_score = child, score
    return best


def _evaluate(policy: StepPolicy, children: list[Node]) -> None:
    open_children = [c for c in children if not c.terminal]
    for child in children:
        if child.terminal:
            r = policy.evaluate_terminal(child)
            if r is not None:
                child.backup(r)
    for child, r in zip(open_children, policy.rollouts(open_children)):
        if r is not None:
            child.backup(r)


def mcts_search(problem: Problem, sampler: Sampler, verifier, cfg: SearchConfig, seed: int = 0,
                render: Callable[[Problem], str] = plain_render) -> SearchResult:
    policy = StepPolicy(sampler, problem, verifier, cfg, seed, render)
    root = policy.new_node("", None)
    sims = 0
    t0 = time.monotonic()
    while sims < cfg.num_simulations and not policy.out_of_budget():
        sims += 1
        node = root
        while node.expanded and node.children and not node.terminal:
            nxt = puct_select(node, cfg.c_puct)
            if nxt is None:
                break
            node = nxt
        if node.terminal:
            if node.reward is None:
                node.reward = policy.evaluate_terminal(node)
            if node.reward is not None:
                node.backup(node.reward)
            continue
        if node.depth >= cfg.max_depth or (node.expanded and not node.children):
            for r in policy.rollouts([node]):
                if r is not None:
                    node.backup(r)
            continue
        _evaluate(policy, policy.expand(node))
    stats = {**policy.stats(), "simulations": sims, "nodes": policy.num_nodes, "wall_s": time.monotonic() - t0}
    return SearchResult(root, policy.candidates, stats)
