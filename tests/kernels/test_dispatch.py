"""The impl switch: ``auto`` means the PyTorch reference on CPU, which needs no Triton at all.

Run: ``python -m pytest -q tests/kernels/test_dispatch.py`` (needs no Triton).
"""

import subprocess
import sys

import pytest
import torch

from alignment.kernels import resolve_impl, triton_available


def test_resolve_impl_rules():
    assert resolve_impl("auto", "cpu") == "torch"
    assert resolve_impl("torch", "cuda") == "torch"
    assert resolve_impl("auto", torch.device("cuda")) == ("triton" if triton_available() else "torch")
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda", "cpu")


def test_auto_on_cpu_works_without_triton():
    """Every op with impl="auto" on CPU, in a fresh interpreter where ``import triton`` fails.

    (Checking ``sys.modules`` instead would test torch, not us: torch._dynamo imports triton
    whenever it is installed.)
    """
    code = """
import sys
sys.modules["triton"] = None  # any import of triton now raises ImportError
import torch
from alignment.kernels import moe_experts, rms_norm, linear_cross_entropy, hybrid_attention
x = torch.randn(6, 8); idx = torch.tensor([[0, 1]] * 6); w = torch.rand(6, 2)
moe_experts(x, torch.randn(3, 10, 8), torch.randn(3, 8, 5), idx, w)
rms_norm(x, torch.ones(8), 1e-6, residual=x)
linear_cross_entropy(x, torch.randn(20, 8), torch.arange(6))
q = torch.randn(1, 2, 6, 4)
hybrid_attention(q, q, q, sliding_window=3, seq_ids_BS=torch.tensor([[0, 0, 0, 1, 1, 1]]))
from alignment.kernels import resolve_impl
assert resolve_impl("auto", "cuda") == "torch"  # no triton -> reference even on CUDA
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_triton_impl_without_triton_says_so(monkeypatch):
    from alignment import kernels

    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        resolve_impl("triton", "cpu")
    assert resolve_impl("auto", "cuda") == "torch"
