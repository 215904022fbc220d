"""Search tree, budgets and the step policy shared by MCTS (mcts.py) and DFS (dfs.py).

A *state* is the problem plus the solution steps written so far. The policy is any
``Sampler``: a *step* is one reasoning line for math (sampling stops at ``"\\n"``) and one
blank-line-separated chunk for code (stops at ``"\\n\\n"``). A state is *terminal* when
its last math step states a final answer (``####``, ``\\boxed``, "answer is", "答案"),
when a code response has closed its fenced block, or when the policy ended the response
(an empty step). A *rollout* samples the rest of the response in one call; rollouts and
terminal states are verified, and the verdict score is the reward.

Priors: children come from ``k`` samples of the next step; duplicates (same text after
whitespace normalisation) are merged and their prior mass summed, and each unique step's
weight is ``exp(mean token logprob)`` (length-normalised so long steps are not punished
for their length), normalised over the children.

Determinism: every sampler call gets ``SamplingParams.seed`` derived from the search seed,
the problem id and a call counter, so the same sampler, problem and config give the same
tree. ``max_wall_s`` (off by default) is the only budget that can break this.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from alignment.sampling.base import Sampler, SamplingParams
from alignment.tasks.format import plain_render
from alignment.tasks.problems import Problem
from alignment.tasks.verify import Verdict

_FINAL_RE = re.compile(r"####|\\boxed\{|\banswer is\b|\banswer\s*:|答案", re.IGNORECASE)


@dataclass
class SearchConfig:
    """Search settings shared by MCTS and DFS.

    Args:
        algorithm (`str`, *optional*, defaults to `"mcts"`): ``mcts`` or ``dfs``.
        num_children (`int`, *optional*, defaults to `4`): k samples per expansion.
        num_simulations (`int`, *optional*, defaults to `32`): MCTS simulations (DFS: expansions) per problem.
        max_depth (`int`, *optional*, defaults to `12`): steps at most; at the limit a rollout finishes the response.
        max_tokens (`int`, *optional*, defaults to `16384`): generated tokens per problem (all calls).
        max_wall_s (`float`, *optional*, defaults to `0.0`): wall-clock budget per problem; 0 = off
            (on, it makes results depend on machine speed).
        c_puct (`float`, *optional*, defaults to `1.5`): exploration weight of PUCT.
        step_tokens (`int`, *optional*, defaults to `96`): max new tokens of one step.
        rollout_tokens (`int`, *optional*, defaults to `512`): max new tokens of a rollout.
        temperature (`float`, *optional*, defaults to `1.0`): step sampling temperature.
        rollout_temperature (`float`, *optional*, defaults to `0.7`): rollout temperature.
        top_p (`float`, *optional*, defaults to `0.95`): nucleus mass for every call.
        stop_after_solutions (`int`, *optional*, defaults to `0`): stop once this many distinct
            verified solutions are found; 0 = use the whole budget.
        partial_checks (`bool`, *optional*, defaults to `True`): DFS prunes math steps with a
            provably wrong arithmetic equation.
    """

    algorithm: str = "mcts"
    num_children: int = 4
    num_simulations: int = 32
    max_depth: int = 12
    max_tokens: int = 16384
    max_wall_s: float = 0.0
    c_puct: float = 1.5
    step_tokens: int = 96
    rollout_tokens: int = 512
    temperature: float = 1.0
    rollout_temperature: float = 0.7
    top_p: float = 0.95
    stop_after_solutions: int = 0
    partial_checks: bool = True

    def __post_init__(self):
        if self.algorithm not in ("mcts", "dfs"):
            raise ValueError(f"search.algorithm must be 'mcts' or 'dfs', got {self.algorithm!r}")
        for name in ("num_children", "num_simulations", "max_depth", "step_tokens", "rollout_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Node:
    """One state. ``visits``/``value_sum`` count the verified rewards backed up through it."""

    id: int
    step: str
    depth: int
    prior: float = 1.0
    parent: "Node | None" = field(default=None, repr=False)
    children: list["Node"] = field(default_factory=list, repr=False)
    visits: int = 0
    value_sum: float = 0.0
    max_reward: float = 0.0
    terminal: bool = False
    expanded: bool = False
    pruned: str | None = None
    reward: float | None = None  # verdict score when the node itself is a terminal state

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def steps(self) -> list[str]:
        out, node = [], self
        while node.parent is not None:
            out.append(node.step)
            node = node.parent
        return out[::-1]

    def path(self) -> list["Node"]:
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def backup(self, reward: float) -> None:
        for node in self.path():
            node.visits += 1
            node.value_sum += reward
            node.max_reward = max(node.max_reward, reward)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "step": self.step, "depth": self.depth, "prior": round(self.prior, 6),
            "visits": self.visits, "value": round(self.value, 6), "max_reward": self.max_reward,
            "terminal": self.terminal, "pruned": self.pruned, "reward": self.reward,
            "children": [c.to_dict() for c in self.children],
        }


@dataclass
class Candidate:
    """A complete response that was verified."""

    text: str
    node_id: int  # the node whose state the response extends (terminal node or rollout start)
    passed: bool
    score: float
    detail: str
    error_kind: str | None
    logprob: float = 0.0


@dataclass
class SearchResult:
    root: Node
    candidates: list[Candidate]
    stats: dict[str, Any]

    def nodes(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(n.children))
        return out


def separator(kind: str) -> str:
    return "\n" if kind == "math" else "\n\n"


def join_steps(kind: str, steps: Sequence[str]) -> str:
    return separator(kind).join(steps)


def normalize_step(text: str) -> str:
    return " ".join(text.split())


def derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little") & 0x7FFFFFFF


class StepPolicy:
    """Wraps a Sampler for one problem: proposes steps, rolls out, verifies, keeps budgets."""

    def __init__(self, sampler: Sampler, problem: Problem, verifier, cfg: SearchConfig, seed: int,
                 render: Callable[[Problem], str] = plain_render):
        self.sampler, self.problem, self.verifier, self.cfg = sampler, problem, verifier, cfg
        self.seed = seed
        self.prefix = render(problem)
        self.sep = separator(problem.kind)
        self.calls = 0
        self.tokens = 0
        self.infra_faults = 0
        self.start = time.monotonic()
        self.candidates: list[Candidate] = []
        self._verdicts: dict[str, Verdict] = {}
        self._next_id = 0

    @property
    def num_nodes(self) -> int:
        return self._next_id

    # ---------------------------------------------------------------- budgets
    def out_of_budget(self) -> bool:
        if self.tokens >= self.cfg.max_tokens:
            return True
        if self.cfg.max_wall_s and time.monotonic() - self.start >= self.cfg.max_wall_s:
            return True
        if self.cfg.stop_after_solutions:
            solved = {c.text for c in self.candidates if c.passed}
            return len(solved) >= self.cfg.stop_after_solutions
        return False

    def new_node(self, step: str, parent: Node | None, prior: float = 1.0) -> Node:
        node = Node(id=self._next_id, step=step, depth=0 if parent is None else parent.depth + 1, prior=prior, parent=parent)
        self._next_id += 1
        if parent is not None:
            parent.children.append(node)
        return node

    def _params(self, max_new_tokens: int, temperature: float, stop: list[str]) -> SamplingParams:
        self.calls += 1
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=self.cfg.top_p,
                              stop=stop, seed=derive_seed(self.seed, self.problem.id, self.calls))

    def state_text(self, steps: Sequence[str]) -> str:
        return join_steps(self.problem.kind, steps)

    def is_terminal_step(self, steps: Sequence[str]) -> bool:
        if self.problem.kind == "math":
            return bool(_FINAL_RE.search(steps[-1]))
        return self.state_text(steps).count("```") >= 2

    # ---------------------------------------------------------------- expansion
    def expand(self, node: Node) -> list[Node]:
        """Sample k next steps of ``node``, merge duplicates, attach children with priors."""
        steps = node.steps()
        prompt = self.prefix + (self.state_text(steps) + self.sep if steps else "")
        params = self._params(self.cfg.step_tokens, self.cfg.temperature, [self.sep])
        samples = self.sampler.generate([prompt], self.cfg.num_children, params)[0]
        node.expanded = True
        merged: dict[str, list] = {}
        for s in samples:
            self.tokens += len(s.token_ids)
            text = s.text.rstrip()
            key = normalize_step(text)
            weight = math.exp(s.logprob_sum / max(1, len(s.token_ids)))
            if key in merged:
                merged[key][1] += weight
            else:
                merged[key] = [text, weight, s.finish_reason]
        total = sum(w for _, w, _ in merged.values()) or 1.0
        children = []
        for text, weight, finish in merged.values():
            child = self.new_node(text, node, prior=weight / total)
            # an empty step means the policy ended the response (EOS or a blank line)
            child.terminal = (not text.strip()) or self.is_terminal_step(steps + [text])
            children.append(child)
        return children

    # ---------------------------------------------------------------- rewards
    def verify_text(self, text: str, node: Node, logprob: float = 0.0) -> float | None:
        """Verify a full response; returns the reward, or None on an infrastructure fault."""
        verdict = self._verdicts.get(text)
        if verdict is None:
            verdict = self.verifier.verify(self.problem, text)
            self._verdicts[text] = verdict
        self.candidates.append(Candidate(text, node.id, verdict.passed, verdict.score, verdict.detail, verdict.error_kind, logprob))
        if verdict.error_kind is not None:
            self.infra_faults += 1
            return None
        return float(verdict.score)

    def evaluate_terminal(self, node: Node) -> float | None:
        text = self.state_text([s for s in node.steps() if s.strip()])
        reward = self.verify_text(text, node)
        node.reward = reward
        return reward

    def rollouts(self, nodes: Sequence[Node]) -> list[float | None]:
        """One rollout per node (a single batched sampler call), each verified."""
        if not nodes:
            return []
        prompts, heads = [], []
        for node in nodes:
            head = self.state_text(node.steps())
            heads.append(head)
            prompts.append(self.prefix + (head + self.sep if head else ""))
        params = self._params(self.cfg.rollout_tokens, self.cfg.rollout_temperature, [])
        results = self.sampler.generate(prompts, 1, params)
        rewards = []
        for node, head, out in zip(nodes, heads, results):
            s = out[0]
            self.tokens += len(s.token_ids)
            text = (head + self.sep if head else "") + s.text
            rewards.append(self.verify_text(text.rstrip(), node, s.logprob_sum))
        return rewards

    def stats(self) -> dict[str, Any]:
        return {"sampler_calls": self.calls, "tokens": self.tokens, "infra_faults": self.infra_faults,
                "verified": len(self.candidates), "solved": any(c.passed for c in self.candidates)}
