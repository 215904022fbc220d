"""The online-DPO pair rule: n scored candidates of one prompt -> a preference pair (or, with
``per_prompt``, several from distinct candidates).

The Yi-Lightning recipe samples 16 responses per prompt from the newest policy, scores each with
the reward model, and trains DPO on "highest vs lowest" with a minimum reward gap. Where the
prompt has a known answer (math, code with tests), a verifier's verdict is combined with the
reward-model score. This module is that selection rule and nothing else: pure functions over
plain data, so the table of cases in ``tests/train/test_pair_rule.py`` pins it down. The reward model's phase-2
curation (``reward.pairs.curate_pairs``) applies the same rule (``best_worst``, scores only), so
ties and gaps are decided here alone.

    cands = [Candidate(text, reward=rm_score, passed=verdict_or_None), ...]
    pair = select_pair(cands, PairRule(rule="best_worst", min_gap=0.5, verifier="veto"), rng)
    # -> Pair(chosen=i, rejected=j, margin=..., why="reward"|"verifier") or Drop(reason)

Verifier combinations (``PairRule.verifier``):

- ``veto`` (default): a verifier-failed candidate is never chosen. Ranking for the rejected side
  puts failed candidates below every other one (then by reward). A pair whose chosen passed and
  whose rejected failed is kept whatever the reward gap (the verifier is ground truth there, and
  exactly these pairs correct the reward model); any other pair needs the reward gap.
- ``bonus``: score = reward + ``verifier_bonus`` for a passed candidate (failed and unknown add
  0); chosen/rejected and the gap are taken on that score; a failed candidate can be chosen when
  the reward model likes it enough.
- ``ignore``: reward only; verdicts are recorded but play no part.

Ties (a gap of exactly 0, or identical texts) are always dropped, whatever ``min_gap``. Run the
tests with ``python -m pytest -q tests/train/test_pair_rule.py``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

RULES = ("best_worst", "best_random")
VERIFIER_MODES = ("veto", "bonus", "ignore")
DROP_REASONS = ("too_few", "all_failed", "tie", "small_gap")


@dataclass
class PairRule:
    """How one prompt's candidates become a preference pair.

    Args:
        rule (`str`, *optional*, defaults to `"best_worst"`): ``best_worst`` pairs the highest-scored
            candidate with the lowest (the report's rule); ``best_random`` pairs the highest with a
            uniformly drawn other candidate among those that clear ``min_gap``.
        min_gap (`float`, *optional*, defaults to `0.5`): smallest score gap (chosen - rejected) for a
            pair to be kept; the report states a minimum gap but not its value, 0.5 reward units is
            ours. Gaps of 0 (ties) are dropped even when ``min_gap`` is 0.
        verifier (`str`, *optional*, defaults to `"veto"`): how verdicts combine with reward scores:
            ``veto``, ``bonus`` or ``ignore`` (see the module docstring).
        verifier_bonus (`float`, *optional*, defaults to `1.0`): added to a passed candidate's score
            in ``bonus`` mode.
        per_prompt (`int`, *optional*, defaults to `1`): up to this many pairs per prompt, each from
            two candidates no earlier pair used (:func:`select_pairs`: the rule applied again to the
            rest, so best with worst, then second best with second worst, ...); 1 is the report's rule.
    """

    rule: str = "best_worst"
    min_gap: float = 0.5
    verifier: str = "veto"
    verifier_bonus: float = 1.0
    per_prompt: int = 1

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"pair rule must be one of {RULES}, got {self.rule!r}")
        if self.verifier not in VERIFIER_MODES:
            raise ValueError(f"pair verifier mode must be one of {VERIFIER_MODES}, got {self.verifier!r}")
        if not self.min_gap >= 0:
            raise ValueError(f"pair min_gap must be >= 0, got {self.min_gap}")
        if not (isinstance(self.per_prompt, int) and self.per_prompt >= 1):
            raise ValueError(f"pair per_prompt must be an integer >= 1, got {self.per_prompt!r}")


@dataclass
class Candidate:
    """One sampled response with its feedback.

    Args:
        text (`str`): the response.
        reward (`float`): reward-model score.
        passed (`bool | None`, *optional*): verifier verdict; ``None`` when the prompt has no known
            answer (or no verifier is configured).
        unsafe (`bool`, *optional*, defaults to `False`): flagged by the safety guard (RAISE reward
            engineering): never chosen in any verifier mode; ranked first for rejection, and a safe
            chosen vs unsafe rejected pair is kept whatever the reward gap.
    """

    text: str
    reward: float
    passed: bool | None = None
    unsafe: bool = False


@dataclass
class Pair:
    """A kept pair: indices into the candidate list, and why it was kept."""

    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float
    why: str  # "reward": the score gap decided; "verifier": passed vs failed decided; "safety": rejected is unsafe

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score


@dataclass
class Drop:
    """No pair for this prompt; ``reason`` is one of ``DROP_REASONS``."""

    reason: str


def combined_scores(cands: Sequence[Candidate], rule: PairRule) -> list[float]:
    """The score each candidate is ranked by under ``rule.verifier``."""
    if rule.verifier == "bonus":
        return [c.reward + (rule.verifier_bonus if c.passed else 0.0) for c in cands]
    return [float(c.reward) for c in cands]


def select_pair(cands: Sequence[Candidate], rule: PairRule, rng: random.Random | None = None) -> Pair | Drop:
    """Pick (chosen, rejected) among one prompt's candidates, or say why there is none.

    Args:
        cands (`Sequence[Candidate]`): the prompt's scored candidates (any order).
        rule (`PairRule`): the selection rule.
        rng (`random.Random`, *optional*): used by ``best_random`` only; pass a seeded one for
            reproducible pairs.

    Returns:
        `Pair | Drop`: the pair (indices into ``cands``), or the drop reason.
    """
    for i, c in enumerate(cands):
        if not math.isfinite(c.reward):
            raise ValueError(f"candidate {i} has a non-finite reward {c.reward!r}")
    if len(cands) < 2:
        return Drop("too_few")
    scores = combined_scores(cands, rule)
    veto = rule.verifier == "veto"

    # Chosen: the best score among those allowed to be chosen; lowest index wins a tie so the
    # result does not depend on sort stability.
    eligible = [i for i, c in enumerate(cands) if not (veto and c.passed is False) and not c.unsafe]
    if not eligible:
        return Drop("all_failed")
    best = max(eligible, key=lambda i: (scores[i], -i))

    def decided_by_verifier(j: int) -> bool:
        return (veto and cands[best].passed is True and cands[j].passed is False) or cands[j].unsafe

    def keeps(j: int) -> bool:
        if cands[j].text == cands[best].text:
            return False
        if decided_by_verifier(j):
            return True
        gap = scores[best] - scores[j]
        return gap > 0 and gap >= rule.min_gap

    others = [j for j in range(len(cands)) if j != best]
    if rule.rule == "best_worst":
        # Failed candidates rank below all others for rejection under veto, then by score.
        worst = min(others, key=lambda j: (0 if cands[j].unsafe else 1, 0 if (veto and cands[j].passed is False) else 1, scores[j], j))
        picks = [worst] if keeps(worst) else []
        probe = worst
    else:
        picks = [j for j in others if keeps(j)]
        probe = min(others, key=lambda j: (scores[j], j))
    if not picks:
        gap = scores[best] - scores[probe]
        tie = gap <= 0 or cands[probe].text == cands[best].text
        return Drop("tie" if tie else "small_gap")
    rejected = picks[0] if len(picks) == 1 else (rng or random.Random(0)).choice(picks)
    return Pair(
        chosen=best,
        rejected=rejected,
        chosen_score=scores[best],
        rejected_score=scores[rejected],
        why="safety" if cands[rejected].unsafe else "verifier" if decided_by_verifier(rejected) else "reward",
    )


def select_pairs(cands: Sequence[Candidate], rule: PairRule, rng: random.Random | None = None) -> list[Pair] | Drop:
    """Up to ``rule.per_prompt`` pairs of one prompt, no candidate in two of them.

    The first pair is :func:`select_pair`'s; each next one is the same rule over the candidates
    left. A pair with the same two texts as an earlier one is skipped (its candidates still count as
    used). The prompt's drop reason when not even one pair is kept.
    """
    first = select_pair(cands, rule, rng)
    if isinstance(first, Drop):
        return first
    pairs, used = [first], {first.chosen, first.rejected}
    seen = {(cands[first.chosen].text, cands[first.rejected].text)}
    while len(pairs) < rule.per_prompt:
        rest = [i for i in range(len(cands)) if i not in used]
        nxt = select_pair([cands[i] for i in rest], rule, rng)
        if isinstance(nxt, Drop):
            break
        pair = replace(nxt, chosen=rest[nxt.chosen], rejected=rest[nxt.rejected])  # back to indices into cands
        used |= {pair.chosen, pair.rejected}
        texts = (cands[pair.chosen].text, cands[pair.rejected].text)
        if texts not in seen:
            seen.add(texts)
            pairs.append(pair)
    return pairs


@dataclass
class PairStats:
    """Counts over a round's prompts: kept pairs, drop reasons, margins."""

    prompts: int = 0
    pairs: int = 0
    by_verifier: int = 0
    drops: Counter = field(default_factory=Counter)
    margins: list[float] = field(default_factory=list)

    def add(self, result: Pair | list[Pair] | Drop) -> None:
        """One prompt's outcome: its pair, its pairs (:func:`select_pairs`), or why it has none."""
        self.prompts += 1
        if isinstance(result, Drop):
            self.drops[result.reason] += 1
            return
        for pair in result if isinstance(result, list) else [result]:
            self.pairs += 1
            self.by_verifier += pair.why == "verifier"
            self.margins.append(pair.margin)

    def as_metrics(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "pairs": self.pairs,
            "pairs_per_prompt": self.pairs / self.prompts if self.prompts else 0.0,
            "prompts_with_pairs": self.prompts - sum(self.drops.values()),
            "pairs_by_verifier": self.by_verifier,
            "pair_margin_mean": sum(self.margins) / len(self.margins) if self.margins else 0.0,
            "pair_margin_min": min(self.margins) if self.margins else 0.0,
        }
        for reason in DROP_REASONS:
            out[f"dropped_{reason}"] = self.drops[reason]
        return out
