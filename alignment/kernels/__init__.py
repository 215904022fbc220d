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

Autocast contract: under ``torch.autocast`` each fused op behaves like the torch op it replaces.
The matmul-class ops (``moe_experts``, ``linear_cross_entropy``, ``hybrid_attention``) run in the
autocast dtype, as ``torch.matmul``/SDPA would: their floating inputs (activations and fp32 master
weights alike) are cast before the custom op, so autograd records the casts and the gradients land
in the master weights' own dtype. ``rms_norm`` is elementwise (autocast leaves it alone): it
promotes ``x + residual`` like the unfused add. Outputs keep the reference's dtypes (``moe_experts``
returns x's dtype, ``linear_cross_entropy`` float32).

Tests: ``python -m pytest -q tests/kernels``. Benchmarks: ``python bench/moe.py``, ``python bench/linear_ce.py``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from alignment.kernels import reference

__all__ = ["moe_experts", "moe_experts_dense", "rms_norm", "linear_cross_entropy", "hybrid_attention", "resolve_impl"]

_IMPLS = ("auto", "torch", "triton")


# Both lookups below are cached in plain module globals: inside a torch.compile'd region (the compiled
# decode step) a cached answer is a constant, while importlib's functions are a graph break.
_TRITON_AVAILABLE: bool | None = None
_LOADED: dict = {}


def triton_available() -> bool:
    """Whether ``triton`` is installed (checked once, without importing it)."""
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        _TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
    return _TRITON_AVAILABLE


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
    mod = _LOADED.get(module)
    if mod is None:
        mod = _LOADED[module] = importlib.import_module(f"alignment.kernels.{module}")
    return mod


def load_triton_paths() -> None:
    """Answer the dispatch's questions now (Triton installed? then its modules imported), so that code
    compiled later with torch.compile finds them cached instead of tracing importlib."""
    if triton_available():
        for module in ("moe", "rmsnorm", "linear_ce", "attention"):
            _triton(module)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype matmuls run in under an enabled ``torch.autocast`` for ``device``'s type, else None."""
    dev_type = torch.device(device).type
    if not torch.is_autocast_enabled(dev_type):
        return None
    return torch.get_autocast_dtype(dev_type)


def _matmul_class(fn, device: torch.device, *tensors):
    """``fn(*tensors)`` as torch's matmul-class ops run under autocast: with autocast enabled for
    ``device``, the floating ``tensors`` are cast to its dtype (differentiably: autograd casts the
    grads back to each input's dtype) and ``fn`` runs with autocast off; otherwise as given."""
    dtype = _autocast_dtype(device)
    if dtype is None:
        return fn(*tensors)
    cast = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    with torch.autocast(torch.device(device).type, enabled=False):
        return fn(*cast)


def moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK, impl: str = "auto"):
    """Routed SwiGLU experts. See :func:`alignment.kernels.reference.moe_experts` for the math.

    x_TD [T, D]; w_gate_up_E2ID [E, 2I, D] (gate rows first); w_down_EDI [E, D, I];
    topk_idx_TK int64 [T, K] (-1 = unused slot); topk_w_TK float32 [T, K]. Returns y_TD in x's dtype.

    With ``impl="auto"`` and K == E (every token's slots name every expert, as in a dense FFN
    upcycled into E segments with top-E routing) there is nothing to route: :func:`moe_experts_dense`
    runs two dense GEMMs over the experts side by side instead of the grouped kernel.
    """
    if impl == "auto" and topk_idx_TK.shape[1] == w_gate_up_E2ID.shape[0]:
        return moe_experts_dense(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK)
    if resolve_impl(impl, x_TD.device) == "triton":
        fused = _triton("moe").moe_experts
        # the routing weights stay float32 (not a matmul operand); the output keeps x's dtype
        y = _matmul_class(lambda x, w_gu, w_down: fused(x, w_gu, w_down, topk_idx_TK, topk_w_TK),
                          x_TD.device, x_TD, w_gate_up_E2ID, w_down_EDI)
        return y.to(x_TD.dtype)
    return reference.moe_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK)


def moe_experts_dense(x_TD, w_gate_up_E2ID, w_down_EDI, topk_idx_TK, topk_w_TK):
    """:func:`moe_experts` as two dense GEMMs over all E experts side by side, each expert's hidden
    activations scaled by its routing weight (0 for an expert no slot names) before the down
    projection. The same math as the routed sum (the down projection is linear); it computes every
    expert for every token, so it pays only when the routing is dense (K == E). Plain torch ops:
    autocast and autograd treat it like any FFN, on every device.
    """
    T, D = x_TD.shape
    E, two_I, _ = w_gate_up_E2ID.shape
    I = two_I // 2
    # routing weight of every (token, expert); unused slots (-1) add 0
    w_TE = torch.zeros(T, E, device=x_TD.device, dtype=torch.float32).scatter_add_(
        1, topk_idx_TK.clamp_min(0), torch.where(topk_idx_TK >= 0, topk_w_TK.float(), 0.0))
    gu_TE2I = torch.matmul(x_TD, w_gate_up_E2ID.reshape(E * two_I, D).t()).view(T, E, two_I)
    h_TEI = torch.nn.functional.silu(gu_TE2I[..., :I]) * gu_TE2I[..., I:]
    h_TEI = h_TEI * w_TE[..., None].to(h_TEI.dtype)
    # down projection of all experts at once: [T, E*I] @ [E*I, D]
    w_down_EID = w_down_EDI.transpose(1, 2)
    y_TD = torch.matmul(h_TEI.reshape(T, E * I), w_down_EID.reshape(E * I, D))
    return y_TD.to(x_TD.dtype)


def rms_norm(x, weight, eps: float, residual=None, impl: str = "auto"):
    """RMSNorm over the last dim; with ``residual`` returns ``(y, h)`` where ``h = x + residual``."""
    if resolve_impl(impl, x.device) == "triton":
        if residual is None or residual.dtype == x.dtype:
            return _triton("rmsnorm").rms_norm(x, weight, eps, residual)
        # mixed dtypes (a bf16 branch output added to an fp32 residual stream under autocast): the sum
        # takes the promoted dtype, as the unfused ``x + residual`` would; y keeps x's dtype
        common = torch.promote_types(x.dtype, residual.dtype)
        y, h = _triton("rmsnorm").rms_norm(x.to(common), weight, eps, residual.to(common))
        return y.to(x.dtype), h
    return reference.rms_norm(x, weight, eps, residual)


def linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index: int = -100, impl: str = "auto"):
    """float32 per-token log-prob of each label under ``hidden @ weight.T``; 0.0 at ``ignore_index``."""
    if resolve_impl(impl, hidden_ND.device) == "triton":
        fused = _triton("linear_ce").linear_cross_entropy
        return _matmul_class(lambda h, w: fused(h, w, labels_N, ignore_index), hidden_ND.device, hidden_ND, weight_VD)
    return reference.linear_cross_entropy(hidden_ND, weight_VD, labels_N, ignore_index)


def hybrid_attention(q_BHSD, k_BHKD, v_BHKD, *, sliding_window=None, seq_ids_BS=None, impl: str = "auto"):
    """Causal GQA attention, optional sliding window and packing (no attention across ``seq_ids``)."""
    if resolve_impl(impl, q_BHSD.device) == "triton":
        flex = _triton("attention").hybrid_attention
        return _matmul_class(lambda q, k, v: flex(q, k, v, sliding_window=sliding_window, seq_ids_BS=seq_ids_BS),
                             q_BHSD.device, q_BHSD, k_BHKD, v_BHKD)
    return reference.hybrid_attention(q_BHSD, k_BHKD, v_BHKD, sliding_window=sliding_window, seq_ids_BS=seq_ids_BS)
