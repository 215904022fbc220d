"""Guards at sampling time: an input check and an output check around any Sampler.

    guarded = GuardedSampler(sampler, GuardConfig(input_action="block", output_action="rewrite"))
    groups = guarded.generate(prompts, n=16, params)
    guarded.events          # every flagged prompt or sample, for monitoring
    guarded.summary()       # counts by side, action and category (the pipeline report shows it)
    guarded.write_log(path) # JSONL, atomically

Actions per side: ``flag`` (log only, pass through), ``block`` (input: the prompt is not sent
to the model and each of its samples is the refusal; output: the sample is replaced by the
refusal with finish_reason ``"guard"``), ``rewrite`` (PII scrubbed; a flagged harmful text is
replaced by the refusal as in ``block``). Reward engineering uses :func:`unsafe` so that a
flagged candidate is never "chosen" in online DPO.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Sequence

from alignment.artifacts import atomic_write_jsonl
from alignment.safety.filter import SafetyFilter
from alignment.safety.rules import Hit, scrub_pii
from alignment.sampling.base import Prompt, Sample, Sampler, SamplingParams

ACTIONS = ("flag", "block", "rewrite")
REFUSAL = ("I can't help with that, because it could cause serious harm. If you're dealing with a difficult "
           "situation, I'm glad to help with safe alternatives or point you to appropriate resources.")


@dataclass
class GuardConfig:
    """Args:
    input_action (`str`, *optional*, defaults to `"block"`): what a flagged prompt gets.
    output_action (`str`, *optional*, defaults to `"block"`): what a flagged sample gets.
    refusal (`str`, *optional*): the text a blocked prompt or sample becomes.
    """

    input_action: str = "block"
    output_action: str = "block"
    refusal: str = REFUSAL

    def __post_init__(self):
        for a in (self.input_action, self.output_action):
            if a not in ACTIONS:
                raise ValueError(f"guard action must be one of {ACTIONS}, got {a!r}")


@dataclass
class GuardEvent:
    time: float
    side: str  # "input" | "output"
    action: str
    categories: list[str]
    prompt_index: int
    sample_index: int | None
    excerpt: str


def prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("role") == "user")


def unsafe(text: str, flt: SafetyFilter | None = None) -> list[Hit]:
    """Hits of the safety rules (and classifier) on ``text``; empty means no guard objection."""
    return (flt or _default_filter()).check(text)


_DEFAULT: SafetyFilter | None = None


def _default_filter() -> SafetyFilter:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SafetyFilter()
    return _DEFAULT


class GuardedSampler:
    """A Sampler that checks prompts before and samples after the wrapped sampler."""

    def __init__(self, sampler: Sampler, cfg: GuardConfig | None = None, flt: SafetyFilter | None = None):
        self.sampler, self.cfg = sampler, cfg or GuardConfig()
        self.filter = flt or _default_filter()
        self.events: list[GuardEvent] = []

    def close(self) -> None:
        """Release the wrapped sampler's engine (see alignment.sampling.close_sampler)."""
        from alignment.sampling import close_sampler

        close_sampler(self.sampler)

    def _log(self, side, action, hits, pi, si, text):
        self.events.append(GuardEvent(time.time(), side, action, sorted({h.category for h in hits}), pi, si, text[:120]))

    def _refusal(self) -> Sample:
        return Sample(text=self.cfg.refusal, token_ids=[], logprob_sum=0.0, finish_reason="guard")

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Sample]]:
        blocked: dict[int, list[Hit]] = {}
        for i, p in enumerate(prompts):
            hits = self.filter.check(prompt_text(p))
            if hits:
                self._log("input", self.cfg.input_action, hits, i, None, prompt_text(p))
                if self.cfg.input_action != "flag":
                    blocked[i] = hits
        to_run = [i for i in range(len(prompts)) if i not in blocked]
        if params.seeds is not None:  # the prompts that run keep their own seeds
            params = replace(params, seeds=[params.seeds[i] for i in to_run])
        produced = self.sampler.generate([prompts[i] for i in to_run], n, params) if to_run else []
        by_index = dict(zip(to_run, produced))
        out = []
        for i in range(len(prompts)):
            if i in blocked:
                out.append([self._refusal() for _ in range(n)])
                continue
            group = []
            for j, s in enumerate(by_index[i]):
                hits = self.filter.check(s.text)
                if hits:
                    self._log("output", self.cfg.output_action, hits, i, j, s.text)
                    if self.cfg.output_action != "flag":
                        s = self._refusal()
                elif self.cfg.output_action == "rewrite":
                    text, counts = scrub_pii(s.text)
                    if counts:
                        self._log("output", "rewrite", [Hit("pii", k, "") for k in counts], i, j, s.text)
                        s = Sample(text, s.token_ids, s.logprob_sum, s.finish_reason)
                group.append(s)
            out.append(group)
        return out

    def summary(self) -> dict[str, int]:
        c = Counter()
        for e in self.events:
            c[f"guard_{e.side}_{e.action}"] += 1
            for cat in e.categories:
                c[f"guard_{e.side}_{cat}"] += 1
        return dict(sorted(c.items()))

    def write_log(self, path) -> None:
        atomic_write_jsonl(path, (asdict(e) for e in self.events))
