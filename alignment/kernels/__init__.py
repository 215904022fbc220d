"""Kernels for the Yi-Lightning model: one dispatch point per op, Triton on GPU, PyTorch elsewhere.

    from alignment.kernels import moe_experts, rms_norm, linear_cross_entropy, hybrid_attention, resolve_impl

Every op takes ``impl="auto"|"torch"|"triton"``. ``auto`` picks the Triton path for CUDA tensors
when ``triton`` is installed and the plain-PyTorch reference (``reference.py``) everywhere else, so
the CPU path never needs Triton (none of our Triton modules is imported there). ``impl="triton"``
on CPU tensors only works under ``TRITON_INTERPRET=1`` (that is how the CPU tests exercise the
kernels). For ``hybrid_attention`` the "triton" path is FlexAttention (which compiles to Triton on GPU).

Each Triton path lives in its own module (``moe.py``, ``rmsnorm.py``, ``linear_ce.py``,
``attention.py``) with its ``@triton.jit`` code in the ``*_kernels.py`` beside it; those modules
are imported lazily, on first use.

Tests: ``python -m pytest -q tests/kernels``. Benchmarks: ``python bench/moe.py``, ``python bench/linear_ce.py``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from alignment.kernels import reference

__all__ = ["moe_experts", "rms_norm", "linear_cross_entropy", "hybrid_attention", "resolve_impl"]

_IMPLS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Whether ``triton`` is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """Map ``impl`` ("auto"|"torch"|"triton") and a device to the path that runs: "torch" or "triton"."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if torch.device(device).type == "cuda" and triton_available() else "torch"
    if impl == "triton" and not triton_available():
        raise RuntimeError("impl='triton' requested but triton is not installed (pip install triton)")
    return impl


def _triton(module: str):
    return importlib.import_module(f"alignment.kernels.{module}")


def moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK, impl: str = "auto"):
    """Routed SwiGLU experts. See :func:`alignment.kernels.reference.moe_experts` for the math.

    x_TD [T, D]; w_gate_up_E2ID [E, 2I, D] (gate rows first); w_down_EDI [E, D, I];
    topk_idx_TK int64 [T, K] (-1 = unused slot); topk_w_TK float32 [T, K]. Returns y_TD in x's dtype.
    """
    if resolve_impl(impl, x_TD.device) == "triton":
        return _triton("moe").moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK)
    return reference.moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK)


def rms_norm(x, weight, eps: float, residual=None, impl: str = "auto"):
    """RMSNorm over the last dim; with ``residual`` returns ``(y, h)`` where ``h = x + residual``."""
    if resolve_impl(impl, x.device) == "triton":
        return _triton("rmsnorm").rms_norm(x, weight, eps, residual)
    return reference.rms_norm(x, weight, eps, residual)


def linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index: int = -100, impl: str = "auto"):
    """float32 per-token log-prob of each label under ``hidden @ weight.T``; 0.0 at ``ignore_index``."""
    if resolve_impl(impl, hidden_ND.device) == "triton":
        return _triton("linear_ce").linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index)
    return reference.linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index)


def hybrid_attention(q_BHSD, k_BHKD, v_BHKD, *, sliding_window=None, seq_ids_BS=None, impl: str = "auto"):
    """Causal GQA attention, optional sliding window and packing (no attention across ``seq_ids``)."""
    if resolve_impl(impl, q_BHSD.device) == "triton":
        return _triton("attention").hybrid_attention(
            q_BHSD, k_BHKD, v_BHKD, sliding_window=sliding_window, seq_ids_BS=seq_ids_BS
        )
    return reference.hybrid_attention(q_BHSD, k_BHKD, v_BHKD, sliding_window=sliding_window, seq_ids_BS=seq_ids_BS)
