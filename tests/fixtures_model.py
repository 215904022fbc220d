"""Model fixtures shared by every area's tests (imported by tests/conftest.py).

- ``tiny_config``: ``load_preset("tiny")`` with ``vocab_size`` = the tiny tokenizer's
  (tests/fixtures_tokenizer.py ``TINY_VOCAB_SIZE``), so token ids from ``tiny_tokenizer`` fit.
  Function-scoped: mutate freely.
- ``tiny_model``: a randomly initialised ``YiLightningForCausalLM`` of that config (CPU, fp32,
  eval mode, seed 0). Function-scoped, so tests may train it.
"""

from __future__ import annotations

import pytest
import torch

from tests.fixtures_tokenizer import TINY_VOCAB_SIZE


def build_tiny_config(**overrides):
    from alignment.model import load_preset

    return load_preset("tiny", **{"vocab_size": TINY_VOCAB_SIZE, **overrides})


def build_tiny_model(seed: int = 0, **overrides):
    from alignment.model import YiLightningForCausalLM

    torch.manual_seed(seed)
    return YiLightningForCausalLM(build_tiny_config(**overrides)).eval()


@pytest.fixture
def tiny_config():
    return build_tiny_config()


@pytest.fixture
def tiny_model():
    return build_tiny_model()

