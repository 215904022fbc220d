"""Shared pieces of the reward tests: a synthetic preference task and a tiny RM trained on it once.

The task: the prompt asks to repeat a 3-digit number; the chosen answer repeats it, the rejected
answer is another random 3-digit number. Both answers come from the same distribution, so a
model that ignores the prompt scores 50% pairwise accuracy; held-out prompts are numbers never
seen in training, so accuracy above chance means the RM learned the prompt-conditional
preference, not a lookup.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.fixtures_model import build_tiny_config


def echo_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = rng.randrange(100, 1000)
        y = x
        while y == x:
            y = rng.randrange(100, 1000)
        rows.append({"prompt": f"Repeat {x}.", "chosen": f"{x}", "rejected": f"{y}",
                     "chosen_score": 1.0, "rejected_score": 0.0, "source": "echo"})
    return rows


def tiny_rm(tokenizer, seed: int = 0, layers: int = 2):
    """A random-init YiLightningForSequenceClassification (2 layers: 1 dense + 1 MoE) for the tiny tokenizer."""
    from alignment.model import YiLightningForSequenceClassification

    torch.manual_seed(seed)
    cfg = build_tiny_config(num_labels=1, num_hidden_layers=layers, pad_token_id=tokenizer.pad_token_id)
    return YiLightningForSequenceClassification(cfg)


@pytest.fixture(scope="session")
def echo_task():
    from reward.pairs import split_by_prompt

    return split_by_prompt(echo_pairs(300), eval_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def trained_rm(tiny_tokenizer, echo_task, tmp_path_factory):
    """(model, tokenizer, init held-out acc, phase metrics, phase dir) after 80 steps on the echo task."""
    from reward.score import RewardScorer
    from reward.train import LoraSpec, RewardPhase, TrainSpec, train_phase

    train, held = echo_task
    model = tiny_rm(tiny_tokenizer)
    init_acc = RewardScorer(model, tiny_tokenizer).pairwise_accuracy(held)[0]
    phase_dir = tmp_path_factory.mktemp("rm") / "pretrain"
    phase = RewardPhase(sources=["echo"], max_steps=80, learning_rate=2e-3, per_device_train_batch_size=16,
                        warmup_ratio=0.05)
    spec = TrainSpec(max_length=64, bf16=False, gradient_checkpointing=False, logging_steps=20, save_steps=20)
    model, metrics = train_phase(model, tiny_tokenizer, train, held, phase, spec, LoraSpec(), phase_dir, "cpu")
    return model, tiny_tokenizer, init_acc, metrics, phase_dir
