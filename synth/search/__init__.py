"""Search over solution steps: MCTS (mcts.py) and DFS (dfs.py) sharing tree.py.

    from synth.search import SearchConfig, search
    result = search(problem, sampler, verifier, SearchConfig(algorithm="mcts"), seed=0)
"""

from __future__ import annotations

from typing import Callable

from alignment.tasks.format import plain_render
from synth.search.dfs import dfs_search
from synth.search.mcts import mcts_search
from synth.search.tree import Candidate, Node, SearchConfig, SearchResult


def search(problem, sampler, verifier, cfg: SearchConfig, seed: int = 0, render: Callable = plain_render) -> SearchResult:
    """Run the algorithm named by ``cfg.algorithm``."""
    fn = mcts_search if cfg.algorithm == "mcts" else dfs_search
    return fn(problem, sampler, verifier, cfg, seed=seed, render=render)


__all__ = ["Candidate", "Node", "SearchConfig", "SearchResult", "plain_render", "dfs_search", "mcts_search", "search"]
