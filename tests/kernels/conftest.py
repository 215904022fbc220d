"""Kernel-test setup: on a machine without CUDA, Triton kernels run on CPU tensors under its interpreter.

TRITON_INTERPRET must be set before the kernel modules are imported (they read it at import to pick
interpreter-safe tile sizes), so it is set here, at collection, and only when no GPU is present.
Tests that need Triton skip cleanly when it is not installed.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device():
    """Where kernel tests run: the GPU when there is one, else CPU tensors under the Triton interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

