"""RAISE-style safety: rule filters + PII scrubbing for any dataset (filter.py, rules.py),
generated safety SFT targets (targets.py), and input/output guards around any Sampler
(guards.py). Switched on in a recipe with ``safety.enabled=true``."""

from alignment.safety.filter import FilterStats, SafetyConfig, SafetyFilter
from alignment.safety.guards import GuardConfig, GuardedSampler, unsafe
from alignment.safety.rules import Hit, RuleSet, scrub_pii
from alignment.safety.targets import is_refusal, safety_records

__all__ = ["FilterStats", "GuardConfig", "GuardedSampler", "Hit", "RuleSet", "SafetyConfig", "SafetyFilter",
           "is_refusal", "safety_records", "scrub_pii", "unsafe"]
