"""Batched reward-model scores for (prompt, response) lists; the scorer online DPO and inspection use.

    from reward.score import RewardScorer
    scorer = RewardScorer.from_pretrained("runs/tiny_cpu/reward/model", device="cpu")
    scorer.score(["What is 2+3?"] * 2, ["5", "6"])      # -> [1.73, -0.41]

:func:`encode_conversation` is the one definition of how a (prompt, response) pair becomes token
ids: the reward trainer (reward/train.py) tokenizes its pairs with it too, so a score at inference
means exactly what it meant in training. With a chat template the pair is rendered as a user turn
(or the given message list) followed by one assistant turn; without one, as
``prompt + response + eos``.

Sequences longer than ``max_length`` keep their last ``max_length`` tokens: the score head reads the
last token, and the end of the answer matters more than the start of a long prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from reward.pairs import Prompt

__all__ = ["encode_conversation", "RewardScorer"]


def encode_conversation(tokenizer, prompt: Prompt, response: str) -> list[int]:
    """Token ids of ``prompt`` followed by the assistant ``response`` (no padding, no truncation)."""
    if tokenizer.chat_template:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        msgs = msgs + [{"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        raise ValueError("a conversation prompt needs a tokenizer with a chat template")
    eos = tokenizer.eos_token or ""
    return tokenizer(prompt + response + eos, add_special_tokens=False)["input_ids"]


class RewardScorer:
    """Scores (prompt, response) pairs with a sequence-classification reward model (``num_labels=1``).

    Args:
        model (`PreTrainedModel`): the reward model (put in eval mode; gradients off while scoring).
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer; needs a pad token (eos is used otherwise).
        device (`str`, *optional*, defaults to `"cpu"`).
        batch_size (`int`, *optional*, defaults to `16`): sequences per forward pass.
        max_length (`int`, *optional*, defaults to `4096`): longer sequences keep their last tokens.
    """

    def __init__(self, model, tokenizer, device: str = "cpu", batch_size: int = 16, max_length: int = 4096):
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model has num_labels=1, this one has {model.config.num_labels}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the sequence-classification head finds the last real token through config.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | str | None = None,
                        batch_size: int = 16, max_length: int = 4096) -> "RewardScorer":
        """Load a ``save_pretrained`` reward model folder (model + tokenizer), e.g. the reward stage's ``model``.

        ``dtype`` (a ``torch.dtype`` or its name, as Hydra passes it) defaults to bfloat16 on CUDA and
        float32 elsewhere.
        """
        import alignment.model  # noqa: F401  (registers the yi_lightning model type with the Auto classes)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignment.checkpoints import check_model_dir

        path = check_model_dir(path, "reward model")
        if dtype is None or dtype == "auto":
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, device=device, batch_size=batch_size, max_length=max_length)

    @torch.no_grad()
    def score_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Scores of already-tokenized sequences, in input order."""
        pad_id = self.tokenizer.pad_token_id
        ids = [list(x)[-self.max_length:] for x in ids]
        # Longest first, so each batch pads to similar lengths; results go back to input order.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [0.0] * len(ids)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding, as in training (TRL's preference collator)
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                use_cache=False).logits
            for row, i in enumerate(idx):
                out[i] = float(logits[row, 0].float())
        return out

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response); ``prompts[i]`` goes with ``responses[i]``."""
        if len(prompts) != len(responses):
            raise ValueError(f"score() got {len(prompts)} prompts but {len(responses)} responses")
        return self.score_ids([encode_conversation(self.tokenizer, p, r) for p, r in zip(prompts, responses)])

    def pairwise_accuracy(self, pairs: Sequence[dict]) -> tuple[float, list[float], list[float]]:
        """Fraction of pairs whose chosen answer outscores the rejected one (ties count as wrong).

        Returns:
            `tuple`: (accuracy, chosen scores, rejected scores).
        """
        if not pairs:
            raise ValueError("pairwise_accuracy needs at least one pair")
        n = len(pairs)
        s = self.score([p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
        chosen, rejected = s[:n], s[n:]
        return sum(c > r for c, r in zip(chosen, rejected)) / n, chosen, rejected
