"""Samplers: one protocol (base.py), three backends, one builder.

    from alignment.sampling import build_sampler, SamplingParams
    sampler = build_sampler(cfg.sampler, checkpoint_dir, device="cuda")
    groups = sampler.generate(prompts, n=16, params=SamplingParams(temperature=1.0, stop=["</answer>"]))

Backends: ``native`` (native.py: the in-repo model, one prefill per prompt shared by its n
samples, batched decode over its own KV cache), ``hf`` (hf.py: ``transformers`` ``generate``,
the baseline) and ``vllm`` (vllm_backend.py + vllm_plugin.py, optional extra). A caller done
with a sampler calls ``close_sampler(sampler)`` (frees vLLM's engine now; a no-op elsewhere). Tests:
``python -m pytest -q tests/sampling``; speed: ``python bench/sampling.py``. What every backend
shares so they agree token for token (prompt encoding, EOS and stop strings) is tokens.py.
"""

from alignment.sampling.base import Message, Prompt, Sample, Sampler, SamplingParams, close_sampler
from alignment.sampling.build import build_sampler
from alignment.sampling.config import SamplerConfig

__all__ = ["Message", "Prompt", "Sample", "Sampler", "SamplingParams", "SamplerConfig", "build_sampler", "close_sampler"]
