"""Candidate rows of a reward-model inspection: grouped by prompt, and the pairs they form.

A candidate is one scored response (``reward.inspect.load_candidates`` builds them): ``prompt``,
``response``, ``score``, ``passed`` (verifier verdict or None), ``pair``/``label`` (the pair row and
side it came from, or None). :mod:`reward.inspect` summarizes them and :mod:`reward.report`
renders them; both group and pair them through this module.
"""

from __future__ import annotations

from reward.pairs import prompt_key


def group_by_prompt(cands: list[dict]) -> dict[str, list[dict]]:
    """Candidates by prompt (``reward.pairs.prompt_key``), in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for c in cands:
        groups.setdefault(prompt_key(c["prompt"]), []).append(c)
    return groups


def labelled_pairs(cands: list[dict]) -> list[tuple[dict, dict]]:
    """(chosen, rejected) candidate pairs from pair rows."""
    by_pair: dict[int, dict[str, dict]] = {}
    for c in cands:
        if c["pair"] is not None:
            by_pair.setdefault(c["pair"], {})[c["label"]] = c
    return [(p["chosen"], p["rejected"]) for p in by_pair.values() if "chosen" in p and "rejected" in p]


def verifier_pairs(cands: list[dict]) -> list[tuple[dict, dict]]:
    """Every (passed, failed) pair of candidates of the same prompt."""
    out = []
    for group in group_by_prompt(cands).values():
        good = [c for c in group if c["passed"] is True]
        bad = [c for c in group if c["passed"] is False]
        out.extend((g, b) for g in good for b in bad)
    return out
