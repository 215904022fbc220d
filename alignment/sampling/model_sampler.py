"""What the backends that hold a model in this process (native, hf) share: loading a policy from a
``save_pretrained`` folder, and :class:`ModelSampler` (tokenizer, device, EOS and pad ids, reload).

``build_sampler`` (alignment/sampling/build.py) loads checkpoints through
:func:`load_model_and_tokenizer`; a backend's ``reload`` (online DPO, between rounds) through
:func:`as_policy`.
"""

from __future__ import annotations

import os

from alignment.sampling.config import SamplerConfig
from alignment.sampling.tokens import eos_token_ids


def as_policy(checkpoint, tokenizer, cfg: SamplerConfig, device: str):
    """A policy to sample from: a ``save_pretrained`` folder (loaded in the sampler's dtype and
    device) or a model object, as is. Backends' ``reload`` (online DPO, between rounds) uses it."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint, _ = load_model_and_tokenizer(checkpoint, tokenizer, cfg, device)
    return checkpoint


def load_model_and_tokenizer(path: str | os.PathLike, tokenizer, cfg: SamplerConfig, device: str):
    """Load a causal LM (and its tokenizer, unless given) from a ``save_pretrained`` folder."""
    import alignment  # noqa: F401  (registers model_type yi_lightning with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.checkpoints import check_model_dir

    check_model_dir(path, "sampler model", tokenizer=tokenizer is None)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=cfg.torch_dtype(device)).to(device)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


class ModelSampler:
    """Shared part of the backends that hold a model in this process (native, hf)."""

    def __init__(self, model, tokenizer, cfg, device: str = "cpu"):
        import torch

        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.device = torch.device(device)
        self.eos_ids = eos_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.eos_ids)

    def reload(self, checkpoint) -> None:
        """Sample from a newer policy from now on (online DPO, between rounds): a save_pretrained
        folder (loaded in this sampler's dtype and device) or a model object."""
        self.model = as_policy(checkpoint, self.tokenizer, self.cfg, str(self.device))
