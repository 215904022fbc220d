"""``build_sampler``: one entry point from a ``sampler`` recipe block to a ready Sampler.

    from alignment.sampling import build_sampler, SamplingParams
    sampler = build_sampler({"backend": "native"}, "runs/tiny_cpu/sft_hard/model", device="cpu")
    samples = sampler.generate(prompts, n=16, params=SamplingParams(temperature=1.0, max_new_tokens=256))

``model_path_or_model`` is a ``save_pretrained`` folder (loaded with the Auto classes; importing
``alignment`` registers the in-repo ``yi_lightning`` architecture) or a model object already in
memory (native and hf only: vLLM loads weights itself, in its own workers).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from alignment.sampling.base import Sampler
from alignment.sampling.config import SamplerConfig
from alignment.sampling.model_sampler import load_model_and_tokenizer


def build_sampler(
    cfg: SamplerConfig | Mapping[str, Any] | None,
    model_path_or_model,
    tokenizer=None,
    device: str = "cpu",
) -> Sampler:
    """Build the backend named by ``cfg.backend`` (``native`` | ``hf`` | ``vllm``).

    Args:
        cfg (`SamplerConfig | dict | DictConfig | None`): the ``sampler`` recipe block; None = defaults.
        model_path_or_model (`str | PathLike | PreTrainedModel`): checkpoint folder or model object.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): defaults to the checkpoint's tokenizer.
        device (`str`, *optional*, defaults to `"cpu"`): where native/hf load a checkpoint and run;
            ``cfg.device`` overrides it; a model object runs on its own device.
    """
    cfg = SamplerConfig.from_any(cfg)
    device = cfg.device or device
    if cfg.backend == "vllm":
        from alignment.sampling.vllm_backend import VLLMSampler

        return VLLMSampler(cfg, model_path_or_model, tokenizer)
    if isinstance(model_path_or_model, (str, os.PathLike)):
        model, tokenizer = load_model_and_tokenizer(model_path_or_model, tokenizer, cfg, device)
    else:
        model = model_path_or_model
        if tokenizer is None:
            raise ValueError("build_sampler: pass tokenizer= when giving a model object instead of a checkpoint path")
        # A model object is sampled where it lives (moving a caller's model would be a surprise).
        device = str(next(model.parameters()).device)
    if cfg.backend == "hf":
        from alignment.sampling.hf import HFSampler

        return HFSampler(model, tokenizer, cfg, device)
    from alignment.sampling.native import NativeSampler

    return NativeSampler(model, tokenizer, cfg, device)
