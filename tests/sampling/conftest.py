"""Fixtures for the sampler tests: a tiny in-repo model whose greedy output is not degenerate.

Random init at the default ``initializer_range`` (0.02) makes the tiny model repeat one token
forever, which would let a broken KV cache pass a greedy-equality test; 0.3 gives varied tokens.
``sliding_window=8`` makes every test generation run past the window, so the ring buffers wrap;
the tiny preset's 8 layers put the two full-attention layers (3, 7) in one KV-sharing pair.
"""

from __future__ import annotations

import pytest

from tests.fixtures_model import build_tiny_model

WINDOW = 8


@pytest.fixture(scope="module")
def model():
    m = build_tiny_model(seed=0, initializer_range=0.3, sliding_window=WINDOW)
    assert m.config.kv_plan() != list(range(m.config.num_hidden_layers)), "tiny preset lost its KV-sharing pair"
    return m


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer
