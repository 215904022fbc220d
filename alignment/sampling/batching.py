"""Batching shared by the in-process backends (native, hf): which prompts go together, left
padding, and the checks every ``generate`` call runs on its arguments."""

from __future__ import annotations

import torch

from alignment.sampling.base import SamplingParams
from alignment.sampling.config import SamplerConfig


def check_params(n: int, params: SamplingParams, num_prompts: int | None = None) -> None:
    """Fail early, naming the field, instead of deep inside a decode loop."""
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be alignment.sampling.SamplingParams, got {type(params).__name__}")
    if params.seeds is not None and num_prompts is not None and len(params.seeds) != num_prompts:
        raise ValueError(f"SamplingParams.seeds has {len(params.seeds)} seeds for {num_prompts} prompts (one per prompt)")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per prompt) must be a positive int, got {n!r}")
    if params.max_new_tokens < 1:
        raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}")
    # [0, 2] and no empty stop string: what vLLM accepts (sampling_params.py, _verify_args), so every
    # backend takes the same params and a bad one fails here, naming our field, not deep in vLLM.
    if not 0.0 <= params.temperature <= 2.0:  # also refuses NaN
        raise ValueError(f"SamplingParams.temperature must be in [0, 2] (0 = greedy), got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {params.top_k}")
    if isinstance(params.stop, str):
        raise TypeError(f"SamplingParams.stop must be a list of strings, got the string {params.stop!r}")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise ValueError(f"SamplingParams.stop must hold non-empty strings, got {list(params.stop)!r}")


def plan_batches(lengths: list[int], n: int, cfg: SamplerConfig) -> list[list[int]]:
    """Split prompt indices into batches of at most ``max_prompts_per_batch`` prompts and
    ``max_batch_size`` decode rows (prompts x n). With ``sort_by_length`` prompts of similar
    length share a batch (longest first, so a too-large batch fails on the first one)."""
    per = max(1, min(cfg.max_prompts_per_batch, cfg.max_batch_size // n))
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if cfg.sort_by_length else list(range(len(lengths)))
    return [order[i : i + per] for i in range(0, len(order), per)]


def left_pad(rows: list[list[int]], pad_id: int, device, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [B, width] with the padding on the left, so every row's
    next token goes to the same column and the last column is every row's last prompt token.
    ``width`` is the longest row rounded up to ``multiple`` (fewer distinct shapes to compile)."""
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def one_call_per_prompt(sampler, prompts, n: int, params: SamplingParams) -> list:
    """``params.seeds`` on a backend without per-prompt streams: one call per prompt, seeded with its seed."""
    from dataclasses import replace

    check_params(n, params, len(prompts))
    return [sampler.generate([p], n, replace(params, seed=s, seeds=None))[0] for p, s in zip(prompts, params.seeds)]
