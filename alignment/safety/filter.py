"""A stage-agnostic safety filter for any dataset the pipeline reads or writes.

    flt = SafetyFilter(SafetyConfig())
    kept, stats = flt.apply(rows)          # chat records, prompt/response rows, preference pairs
    card_fields = stats.as_card()          # counts by reason, for the dataset's data card

A row is dropped when a rule (or the optional classifier) flags any of its user-side text
(prompts, user turns) or model-side text (responses, assistant turns, chosen/rejected);
surviving rows have PII scrubbed in place. Safety SFT rows (``source`` starting with
``safety``) are exempt from the drop: their harmful prompts are there on purpose, paired
with refusals.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from alignment.safety.rules import Hit, RuleSet, scrub_pii

# Fields that hold text, by row layout; anything else is left alone.
_TEXT_FIELDS = ("prompt", "response", "chosen", "rejected", "completion", "text", "instruction", "input", "output")


class Classifier(Protocol):
    """Pluggable model-based check: ``classify(text) -> list[Hit]`` (empty list = safe)."""

    def classify(self, text: str) -> list[Hit]: ...


@dataclass
class SafetyConfig:
    """Safety switches for filters and guards.

    Args:
        enabled (`bool`, *optional*, defaults to `False`): master switch (recipes turn it on with
            ``safety.enabled=true``).
        categories (`list[str]`, *optional*): rule categories to apply (default: all).
        scrub_pii (`bool`, *optional*, defaults to `True`): replace PII in kept rows.
        classifier (`dict`, *optional*): a ``_target_`` block instantiating a :class:`Classifier`.
        exempt_source_prefix (`str`, *optional*, defaults to `"safety"`): sources never dropped.
        sft_weight (`float`, *optional*, defaults to `0.05`): mixture weight of the generated safety
            SFT targets (``builtin:safety``) in each SFT stage.
        sft_size (`int`, *optional*, defaults to `2000`): how many safety targets to generate.
        guard_input (`str`, *optional*, defaults to `"block"`): sampling-time input guard action.
        guard_output (`str`, *optional*, defaults to `"flag"`): sampling-time output guard action
            (online DPO vetoes flagged candidates from being chosen whatever this is).
    """

    enabled: bool = False
    categories: list[str] = field(default_factory=list)
    scrub_pii: bool = True
    classifier: dict | None = None
    exempt_source_prefix: str = "safety"
    sft_weight: float = 0.05
    sft_size: int = 2000
    guard_input: str = "block"
    guard_output: str = "flag"


@dataclass
class FilterStats:
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # by category
    pii_scrubbed: Counter = field(default_factory=Counter)  # by PII kind

    def as_card(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "dropped_by_reason": dict(sorted(self.dropped.items())),
                "pii_scrubbed": dict(sorted(self.pii_scrubbed.items()))}


def row_texts(row: dict) -> list[str]:
    """Every piece of text in a chat record, prompt/response row or preference pair."""
    texts = [m["content"] for m in row.get("messages", []) if isinstance(m, dict) and isinstance(m.get("content"), str)]
    for key in _TEXT_FIELDS:
        v = row.get(key)
        if isinstance(v, str):
            texts.append(v)
        elif isinstance(v, list):  # TRL conversational pairs: chosen/rejected as message lists
            texts += [m["content"] for m in v if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return texts


def _scrub_row(row: dict, counts: Counter) -> dict:
    def fix(s: str) -> str:
        out, c = scrub_pii(s)
        counts.update(c)
        return out

    row = copy.deepcopy(row)
    for m in row.get("messages", []):
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            m["content"] = fix(m["content"])
    for key in _TEXT_FIELDS:
        v = row.get(key)
        if isinstance(v, str):
            row[key] = fix(v)
        elif isinstance(v, list):
            for m in v:
                if isinstance(m, dict) and isinstance(m.get("content"), str):
                    m["content"] = fix(m["content"])
    return row


class SafetyFilter:
    def __init__(self, cfg: SafetyConfig | None = None, classifier: Classifier | None = None):
        self.cfg = cfg or SafetyConfig(enabled=True)
        self.rules = RuleSet(self.cfg.categories or None)
        if classifier is None and self.cfg.classifier:
            from hydra.utils import instantiate

            classifier = instantiate(self.cfg.classifier)
        self.classifier = classifier

    def check(self, text: str) -> list[Hit]:
        hits = self.rules.check(text)
        if self.classifier is not None:
            hits += self.classifier.classify(text)
        return hits

    def apply(self, rows: Iterable[dict]) -> tuple[list[dict], FilterStats]:
        stats, kept = FilterStats(), []
        for row in rows:
            stats.seen += 1
            exempt = str(row.get("source", "")).startswith(self.cfg.exempt_source_prefix)
            hits = [] if exempt else [h for t in row_texts(row) for h in self.check(t)]
            if hits:
                stats.dropped[hits[0].category] += 1
                continue
            kept.append(_scrub_row(row, stats.pii_scrubbed) if self.cfg.scrub_pii else row)
            stats.kept += 1
        return kept, stats
