"""The Sampler protocol shared by every backend (native, hf, vllm) and every caller
(synth search, online DPO, eval, reward inspection, safety guards).

    sampler.generate(prompts, n, params) -> list[list[Sample]]

``prompts`` are raw strings or chat message lists (``[{"role": ..., "content": ...}]``;
the backend applies the tokenizer's chat template with a generation prompt). The result
has one list per prompt, each with ``n`` samples. The backends that hold a model in this
process (native, hf) share alignment/sampling/model_sampler.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, Union, runtime_checkable

Message = dict[str, str]
Prompt = Union[str, list[Message]]


@dataclass
class SamplingParams:
    """Decoding settings.

    Args:
        max_new_tokens (`int`, *optional*, defaults to `256`): tokens generated at most per sample.
        temperature (`float`, *optional*, defaults to `1.0`): 0 means greedy; at most 2 (vLLM's bound,
            kept for every backend).
        top_p (`float`, *optional*, defaults to `1.0`): nucleus mass kept.
        top_k (`int`, *optional*, defaults to `0`): keep the k most likely tokens; 0 = off.
        stop (`list[str]`, *optional*): generation of a sample ends at the first of these
            (non-empty) strings; the returned text is cut before it (finish_reason ``"stop"``).
        seed (`int | None`, *optional*): same seed, same prompts, same params -> same samples.
        seeds (`list[int] | None`, *optional*): one seed per prompt, overriding ``seed``: each prompt's
            samples come from its own stream and do not depend on the prompts it shares a call (or a
            batch) with, so N ranks sampling shards of a pool draw what one process draws. The native
            backend keeps batching (a per-prompt uniform stream, inverse-CDF draws); the others make one
            call per prompt.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    seeds: list[int] | None = None


@dataclass
class Sample:
    """One generated completion.

    Args:
        text (`str`): the decoded completion (prompt excluded, cut before a stop string).
        token_ids (`list[int]`): the generated token ids (prompt excluded).
        logprob_sum (`float`): sum of the sampled tokens' log-probabilities under the
            (unmodified, temperature-1) model distribution.
        finish_reason (`str`): ``"stop"`` (stop string or EOS) or ``"length"``.
    """

    text: str
    token_ids: list[int]
    logprob_sum: float
    finish_reason: str


@runtime_checkable
class Sampler(Protocol):
    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Sample]]: ...


def close_sampler(sampler) -> None:
    """Release what a sampler holds on the accelerator now. vLLM's engine keeps its GPU memory until
    ``close()`` (garbage collection may come too late for the model loaded next on the same card);
    the in-process backends (native, hf) have no ``close`` and are freed with their last reference."""
    close = getattr(sampler, "close", None)  # optional: only engine-backed samplers (vllm) have one
    if close is not None:
        close()
