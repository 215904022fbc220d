"""Depth-first search over solution steps with pruning.

From each state, sample k next steps (one sampler call), drop children that
  - repeat a state already seen anywhere in this search (duplicate states),
  - fail a partial check (math: a step whose bare arithmetic is provably wrong,
    ``alignment.tasks.verify.math.step_arithmetic_ok``; code has no partial check),
and visit the survivors in order of prior (highest first). Terminal children are
verified; a state at ``max_depth`` is finished with one rollout and verified. Every reward
is backed up along its path, so each node's visits/value count the verified responses
below it, as in MCTS. Budgets: expansions (``num_simulations``), tokens, wall time and
``stop_after_solutions`` (e.g. 1 = stop at the first verified solution).

    from synth.search.dfs import dfs_search
    result = dfs_search(problem, sampler, get_verifier(problem.kind), SearchConfig(algorithm="dfs"))
"""

from __future__ import annotations

import time
from typing import Callable

from alignment.sampling.base import Sampler
from alignment.tasks.format import plain_render
from alignment.tasks.problems import Problem
from alignment.tasks.verify.math import step_arithmetic_ok
from synth.search.tree import Node, SearchConfig, SearchResult, StepPolicy, normalize_step


def dfs_search(problem: Problem, sampler: Sampler, verifier, cfg: SearchConfig, seed: int = 0,
               render: Callable[[Problem], str] = plain_render) -> SearchResult:
    policy = StepPolicy(sampler, problem, verifier, cfg, seed, render)
    root = policy.new_node("", None)
    seen: set[str] = {""}
    counts = {"expansions": 0, "pruned_duplicate": 0, "pruned_check": 0, "depth_rollouts": 0}
    t0 = time.monotonic()
    # explicit stack (no recursion limit): children pushed in reverse so the best prior pops first
    stack: list[Node] = [root]
    while stack and not policy.out_of_budget():
        node = stack.pop()
        if node.terminal:
            r = policy.evaluate_terminal(node)
            if r is not None:
                node.backup(r)
            continue
        if node.depth >= cfg.max_depth:
            counts["depth_rollouts"] += 1
            for r in policy.rollouts([node]):
                if r is not None:
                    node.backup(r)
            continue
        if counts["expansions"] >= cfg.num_simulations:
            break
        counts["expansions"] += 1
        keep = []
        for child in policy.expand(node):
            key = normalize_step(policy.state_text(child.steps()))
            if key in seen:
                child.pruned = "duplicate"
                counts["pruned_duplicate"] += 1
                continue
            seen.add(key)
            if cfg.partial_checks and problem.kind == "math" and not step_arithmetic_ok(child.step):
                child.pruned = "partial_check"
                counts["pruned_check"] += 1
                continue
            keep.append(child)
        keep.sort(key=lambda c: -c.prior)  # stable: equal priors keep sampling order
        stack.extend(reversed(keep))
    stats = {**policy.stats(), **counts, "nodes": policy.num_nodes, "wall_s": time.monotonic() - t0}
    return SearchResult(root, policy.candidates, stats)
