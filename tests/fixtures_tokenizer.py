"""Tokenizer fixtures shared by every area's tests (imported by tests/conftest.py).

- ``tiny_tokenizer``: our byte-level BPE (alignment.model.tokenizer) with exactly
  ``TINY_VOCAB_SIZE`` = 1,024 tokens, trained in ~0.2 s on a slice of offline text
  (chatterbot English + Chinese dialogs and our procedural arithmetic). Session-scoped and
  deterministic: every test process gets the same ids. Do not mutate it (add_tokens etc.);
  build your own with ``build_tiny_tokenizer()`` if you must.
- ``tiny_tokenizer_path``: the same tokenizer saved with ``save_pretrained`` in a session
  temp folder, for code that loads a tokenizer (or a model folder) from disk.
"""

from __future__ import annotations

import pytest

TINY_VOCAB_SIZE = 1024
# ~60K characters per source keeps training well under a second while still learning merges
# for common English words, frequent Chinese characters and the arithmetic format.
TINY_SOURCES = ("chatterbot_en", "chatterbot_zh", "arithmetic")
TINY_CHARS_PER_SOURCE = 60_000


def build_tiny_tokenizer():
    """Train the tiny test tokenizer (what the ``tiny_tokenizer`` fixture returns)."""
    from alignment.data.pretrain_corpus import load_corpus
    from alignment.model.tokenizer import build_tokenizer

    texts = load_corpus(TINY_SOURCES, split="train", max_chars_per_source=TINY_CHARS_PER_SOURCE)
    return build_tokenizer(texts, vocab_size=TINY_VOCAB_SIZE)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tiny_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    tiny_tokenizer.save_pretrained(str(path))
    return path
