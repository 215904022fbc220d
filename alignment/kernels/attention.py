"""Hybrid-pattern attention on GPU through FlexAttention (which compiles to fused Triton kernels).

``hybrid_attention(q_BHSD, k_BHKD, v_BHKD, *, sliding_window, seq_ids_BS)``: causal GQA attention
where a key j is visible to query i only if j <= i, optionally i - j < sliding_window, and (with
packing) seq_ids[j] == seq_ids[i]; queries are the last S of the L key positions (decode with a
KV cache). Same contract as ``reference.hybrid_attention`` (SDPA with an explicit boolean mask),
but the mask is a ``mask_mod`` plus a block-sparse ``BlockMask`` (``block_mask_from_ranges``:
classified per 128x128 block from position and seq_id ranges, not per element): fully masked
blocks (outside the window, other samples) are skipped, not computed and discarded.

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
otherwise cost a new BlockMask.

One compiled FlexAttention serves every call. TorchDynamo keeps its compiled variants on
``flex_attention``'s code object and gives up after ``recompile_limit`` (8) of them, falling back for
the rest of the process to an unfused FlexAttention that materializes every score (a whole
pipeline runs in one process: on 2026-12-01 the limit was hit in sft_hard, and every later stage
trained and sampled on the unfused path). So: (1) ``mask_mod`` closes over no per-call Python
number (the key length and the query offset are 0-d tensors; a captured int is a guard, and each
new packed length was a recompile); (2) the variants that remain are few and fixed: grad mode x
dtype x sliding or full x packed or not (16 at most, a stage meets about 4; each once more when
the queries are the last S < L keys, since the first compile made S and L one size), and
``compile_flex`` raises the limit to ``RECOMPILE_LIMIT`` so all of them stay compiled; (3) shapes
are dynamic from the first compile (``dynamic=True``): automatic dynamic marks a dimension only
after it changed, so each variant recompiled again for each dimension (key length, then its
block count) that had not moved yet. tests/kernels/test_attention.py checks that new lengths and
offsets compile nothing once each variant has run once.

Tuning: FlexAttention's own block sizes (128x128 by default on H100) are left as they are;
``FLEX_MIN_QUERIES`` = 128 is one Flex query block (re-measure with bench/attention.py).
Tests: ``python -m pytest -q tests/kernels/test_attention.py``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch._dynamo
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from alignment.kernels import reference

FLEX_MIN_QUERIES = 128
BLOCK = 128  # FlexAttention's default block size on both axes
RECOMPILE_LIMIT = 64  # >= the 16 variants named in the module docstring, each with and without a query offset
_MASK_CACHE_SIZE = 8
_BLOCK_TENSORS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                  "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")
_mask_cache: OrderedDict = OrderedDict()
_compiled_flex = None


def compile_flex(backend: str = "inductor"):
    """``torch.compile(flex_attention, dynamic=True)``, TorchDynamo's recompile limit raised to ``RECOMPILE_LIMIT``.

    The limit is process-wide (TorchDynamo has no per-function one); it is only ever raised.
    ``backend="eager"`` lets CPU tests trace the same guards without Inductor.
    """
    cfg = torch._dynamo.config
    if cfg.recompile_limit < RECOMPILE_LIMIT:
        cfg.recompile_limit = RECOMPILE_LIMIT
    return torch.compile(flex_attention, backend=backend, dynamic=True)


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = compile_flex()
    return _compiled_flex


def block_mask_from_ranges(mask_mod, S: int, L: int, sliding_window: int | None, seq_ids_BS: torch.Tensor | None,
                           device, block: int = BLOCK) -> BlockMask:
    """The ``BlockMask`` of :func:`hybrid_attention`'s mask, classified per block pair, not per element.

    ``create_block_mask`` evaluates ``mask_mod`` on every (query, key) pair: for one packed 16K-token
    training row that is two [16K, 16K] grids per forward (sliding and full), ~270M elements through
    several int64 ops each. Here each (query block, key block) pair is classified from its position
    range and its seq_id range (min and max per block) in [B, S/128, L/128] work:
    empty when no pair can be visible (keys all after the queries, all outside the window, or seq_id
    ranges disjoint); full when every pair is (keys all at or before the queries and inside the
    window, one and the same seq_id on both sides, no padding to the block size); partial otherwise,
    where ``mask_mod`` decides per element. "Partial" may include a block whose pairs all fail (ranges
    that meet without a shared seq_id): it costs one masked-out block, never a wrong result.
    Queries are the last S of the L keys.
    """
    nq, nk = -(-S // block), -(-L // block)
    offset = L - S
    q_lo = torch.arange(nq, device=device) * block  # query index range of each block, then its absolute position
    q_hi = torch.clamp(q_lo + block - 1, max=S - 1)
    k_lo = torch.arange(nk, device=device) * block
    k_hi = torch.clamp(k_lo + block - 1, max=L - 1)
    qa_lo, qa_hi = (q_lo + offset)[:, None], (q_hi + offset)[:, None]
    k_lo, k_hi = k_lo[None, :], k_hi[None, :]
    some = k_lo <= qa_hi  # [nq, nk]: causal for some pair
    every = k_hi <= qa_lo
    if sliding_window is not None:
        some = some & (qa_lo - k_hi < sliding_window)
        every = every & (qa_hi - k_lo < sliding_window)
    every = every & ((q_lo + block <= S)[:, None]) & ((k_lo + block <= L))  # blocks padded past the end: partial
    some, every = some[None], every[None]  # [1, nq, nk]
    if seq_ids_BS is not None:
        B = seq_ids_BS.shape[0]
        ids = seq_ids_BS.long()
        big = torch.iinfo(torch.long).max

        def ranges(x, n):  # per-block min and max of x [B, n*block - pad]
            pad = n * block - x.shape[1]
            lo = torch.nn.functional.pad(x, (0, pad), value=big).view(B, n, block).amin(-1)
            hi = torch.nn.functional.pad(x, (0, pad), value=-big).view(B, n, block).amax(-1)
            return lo, hi

        qid_lo, qid_hi = ranges(ids[:, offset:], nq)
        kid_lo, kid_hi = ranges(ids, nk)
        meet = (qid_lo[:, :, None] <= kid_hi[:, None, :]) & (kid_lo[:, None, :] <= qid_hi[:, :, None])
        one = ((qid_lo == qid_hi)[:, :, None] & (kid_lo == kid_hi)[:, None, :]
               & (qid_lo[:, :, None] == kid_lo[:, None, :]))
        some, every = some & meet, every & one
    partial = some & ~every

    def listing(sel_BQK):  # (count per query block, key block indices with the selected ones first)
        num = sel_BQK.sum(-1, dtype=torch.int32)
        idx = torch.argsort((~sel_BQK).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[:, None], idx[:, None]

    kv_num, kv_idx = listing(partial)
    full_num, full_idx = listing(every)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(S, L))


def _block_mask(B: int, S: int, L: int, sliding_window: int | None, seq_ids_BS: torch.Tensor | None, device):
    key = (B, S, L, sliding_window, str(device),
           None if seq_ids_BS is None else (seq_ids_BS.data_ptr(), seq_ids_BS._version, tuple(seq_ids_BS.shape)))
    hit = _mask_cache.get(key)
    if hit is not None:
        _mask_cache.move_to_end(key)
        return hit[0]
    # 0-d tensors, not ints: the compiled FlexAttention guards on the ints a mask_mod captures
    # (one recompile per new length), while a captured tensor is only a buffer argument. torch.full,
    # not torch.tensor: a fill kernel, where torch.tensor copies from pageable host memory (a host sync).
    offset = torch.full((), L - S, dtype=torch.long, device=device)
    last = torch.full((), L - 1, dtype=torch.long, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        keep = kv_idx <= q_pos
        if sliding_window is not None:
            keep = keep & (q_pos - kv_idx < sliding_window)
        if seq_ids_BS is not None:
            # FlexAttention also evaluates positions past the end (padding to its 128 block): clamp so
            # those lookups stay inside seq_ids (their scores are masked out anyway).
            qi, ki = torch.minimum(q_pos, last), torch.minimum(kv_idx, last)
            keep = keep & (seq_ids_BS[b, qi] == seq_ids_BS[b, ki])
        return keep

    bm = block_mask_from_ranges(mask_mod, S, L, sliding_window, seq_ids_BS, device)
    # ``dynamic=True`` reaches the query and keys but not the BlockMask's own tensors: without this,
    # each new block count (every 128 positions) was a recompile
    for name in _BLOCK_TENSORS:
        t = getattr(bm, name)
        if t is not None:
            for dim in range(2, t.dim()):
                torch._dynamo.maybe_mark_dynamic(t, dim)
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
