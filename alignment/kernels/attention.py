"""Hybrid-pattern attention on GPU through FlexAttention (which compiles to fused Triton kernels).

``hybrid_attention(q_BHSD, k_BHKD, v_BHKD, *, sliding_window, seq_ids_BS)``: causal GQA attention
where a key j is visible to query i only if j <= i, optionally i - j < sliding_window, and (with
packing) seq_ids[j] == seq_ids[i]; queries are the last S of the L key positions (decode with a
KV cache). Same contract as ``reference.hybrid_attention`` (SDPA with an explicit boolean mask),
but the mask is a ``mask_mod`` that FlexAttention turns into a block-sparse ``BlockMask``: fully
masked blocks (outside the window, other samples) are skipped, not computed and discarded.

Why FlexAttention rather than a hand-written Triton kernel: it already fuses sliding-window and
block-causal masks with block skipping, forward and backward; bench/attention.py measures it
against SDPA with the dense mask (the torch path) and flash SDPA (full causal only, a ceiling).

BlockMasks are cached (``_MASK_CACHE_SIZE`` entries) keyed by shape, window and the identity of
``seq_ids`` (the cache holds a reference to it, so its storage can't be reused by another tensor;
an in-place edit bumps its version and misses): every layer of one forward shares one mask.
On CPU (tests) the eager FlexAttention is used for forward-only calls (it has no CPU backward, so
a CPU forward that needs grads takes the SDPA reference); on CUDA a ``torch.compile``d one.

Short query chunks (S < ``FLEX_MIN_QUERIES``: decode steps, small prefill chunks) go to the SDPA
reference instead: their dense mask is at most [B, 1, 127, L], and each new cache length L would
otherwise cost a new BlockMask (and, until the compile turns dynamic, a Flex recompile).

Tuning: FlexAttention's own block sizes (128x128 by default on H100) are left as they are;
``FLEX_MIN_QUERIES`` = 128 is one Flex query block (re-measure with bench/attention.py).
Tests: ``python -m pytest -q tests/kernels/test_attention.py``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from alignment.kernels import reference

FLEX_MIN_QUERIES = 128
_MASK_CACHE_SIZE = 8
_mask_cache: OrderedDict = OrderedDict()
_compiled_flex = None


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def _block_mask(B: int, S: int, L: int, sliding_window: int | None, seq_ids_BS: torch.Tensor | None, device):
    key = (B, S, L, sliding_window, str(device),
           None if seq_ids_BS is None else (seq_ids_BS.data_ptr(), seq_ids_BS._version, tuple(seq_ids_BS.shape)))
    hit = _mask_cache.get(key)
    if hit is not None:
        _mask_cache.move_to_end(key)
        return hit[0]
    offset = L - S

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        keep = kv_idx <= q_pos
        if sliding_window is not None:
            keep = keep & (q_pos - kv_idx < sliding_window)
        if seq_ids_BS is not None:
            # FlexAttention also evaluates positions past the end (padding to its 128 block): clamp so
            # those lookups stay inside seq_ids (their scores are masked out anyway).
            qi, ki = q_pos.clamp(max=L - 1), kv_idx.clamp(max=L - 1)
            keep = keep & (seq_ids_BS[b, qi] == seq_ids_BS[b, ki])
        return keep

    bm = create_block_mask(mask_mod, B if seq_ids_BS is not None else None, None, S, L, device=device)
    _mask_cache[key] = (bm, seq_ids_BS)  # keep seq_ids alive: its data_ptr stays unique while cached
    if len(_mask_cache) > _MASK_CACHE_SIZE:
        _mask_cache.popitem(last=False)
    return bm


def hybrid_attention(q_BHSD, k_BHKD, v_BHKD, *, sliding_window=None, seq_ids_BS=None):
    """FlexAttention version of :func:`alignment.kernels.reference.hybrid_attention`."""
    B, H, S, _ = q_BHSD.shape
    Kh, L = k_BHKD.shape[1], k_BHKD.shape[2]
    if H % Kh:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Kh})")
    if S > L:
        raise ValueError(f"more queries ({S}) than keys ({L})")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    if seq_ids_BS is not None and seq_ids_BS.shape != (B, L):
        raise ValueError(f"seq_ids has shape {tuple(seq_ids_BS.shape)}, expected [B={B}, L={L}]")
    # FlexAttention has no CPU backward: a CPU forward that needs grads (tests of training under the
    # Triton interpreter) takes the SDPA reference, which computes the same attention.
    cpu_grad = not q_BHSD.is_cuda and torch.is_grad_enabled() and any(
        t.requires_grad for t in (q_BHSD, k_BHKD, v_BHKD)
    )
    if (S < FLEX_MIN_QUERIES and q_BHSD.is_cuda) or cpu_grad:
        return reference.hybrid_attention(q_BHSD, k_BHKD, v_BHKD, sliding_window=sliding_window, seq_ids_BS=seq_ids_BS)
    bm = _block_mask(B, S, L, sliding_window, seq_ids_BS, q_BHSD.device)
    fn = _flex() if q_BHSD.is_cuda else flex_attention
    return fn(q_BHSD, k_BHKD, v_BHKD, block_mask=bm, enable_gqa=Kh != H)
