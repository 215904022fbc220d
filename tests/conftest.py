"""Shared pytest fixtures. Each area keeps its fixtures in its own module, imported here."""

from tests.fixtures_model import *  # noqa: F401,F403  (tiny_config, tiny_model: owned by the model area)
from tests.fixtures_tokenizer import *  # noqa: F401,F403  (tiny_tokenizer: owned by the tokenizer area)
