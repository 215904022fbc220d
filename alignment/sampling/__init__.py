"""Samplers: one protocol, several backends (see base.py)."""

from alignment.sampling.base import Message, Prompt, Sample, Sampler, SamplingParams

__all__ = ["Message", "Prompt", "Sample", "Sampler", "SamplingParams"]
