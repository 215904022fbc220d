"""FlexAttention hybrid attention against the SDPA + explicit-mask reference.

Run: ``python -m pytest -q tests/kernels/test_attention.py`` (eager FlexAttention on CPU).
"""

import pytest
import torch

pytest.importorskip("triton")  # impl="triton" (the Flex path) is refused without triton installed

from alignment.kernels import hybrid_attention, reference  # noqa: E402
from tests.kernels.numerics import rel_err  # noqa: E402

# (B, H, Kh, S, L, window, packed, reason)
CASES = [
    (2, 4, 2, 40, 40, None, False, "full causal, GQA 2:1, S not a multiple of the 128 block"),
    (1, 2, 2, 150, 150, 16, False, "sliding window much smaller than a block: partial blocks"),
    (2, 4, 1, 64, 64, None, True, "packing: block-causal mask from seq_ids, MQA"),
    (2, 4, 1, 200, 200, None, True, "packing past one Flex block, S not a multiple of 128 (on GPU the short"
     " rows take the SDPA path, so this row is what checks Flex's padded tail with seq_ids there)"),
    (2, 2, 2, 130, 130, 20, True, "sliding window and packing together"),
    (1, 4, 2, 1, 33, 8, False, "decode: one query against a 33-key cache with a window"),
]


def seq_ids(B, L, gen):
    ids = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        cuts = torch.randint(1, L, (3,), generator=gen).sort().values
        for c in cuts:
            ids[b, c:] += 1
    return ids


@pytest.mark.parametrize("case", CASES, ids=[c[-1] for c in CASES])
def test_flex_matches_reference(case, device):
    B, H, Kh, S, L, window, packed, _ = case
    gen = torch.Generator().manual_seed(S + L)
    grad = device.type == "cuda"  # FlexAttention has no CPU backward; gradients are checked on the GPU
    q = torch.randn(B, H, S, 16, generator=gen).to(device).requires_grad_(grad)
    k = torch.randn(B, Kh, L, 16, generator=gen).to(device).requires_grad_(grad)
    v = torch.randn(B, Kh, L, 16, generator=gen).to(device).requires_grad_(grad)
    ids = seq_ids(B, L, gen).to(device) if packed else None
    out = hybrid_attention(q, k, v, sliding_window=window, seq_ids_BS=ids, impl="triton")
    qr, kr, vr = (t.detach().cpu().requires_grad_() for t in (q, k, v))
    ref = reference.hybrid_attention(qr, kr, vr, sliding_window=window, seq_ids_BS=None if ids is None else ids.cpu())
    # fp32 on both sides; different (blocked, online-softmax) summation order only. On the GPU
    # FlexAttention's fp32 dots may use TF32 (~3e-4 relative, device/METHOD.md): 2e-3 there.
    tol = 2e-3 if grad else 1e-5
    assert rel_err(out, ref) < tol
    if not grad:
        return
    do = torch.randn(ref.shape, generator=gen)
    out.backward(do.to(device))
    ref.backward(do)
    for name, a, b in (("dq", q, qr), ("dk", k, kr), ("dv", v, vr)):
        assert rel_err(a.grad, b.grad) < tol, name




def test_mask_cache_sees_in_place_edit(device):
    """Regression guard: editing seq_ids in place must not reuse a stale cached BlockMask."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 160, 16, generator=gen).to(device) for _ in range(3))  # >= 128 queries: the Flex path; head_dim 16 is its CUDA minimum
    ids = torch.zeros(1, 160, dtype=torch.long, device=device)
    a = hybrid_attention(q, k, v, seq_ids_BS=ids, impl="triton")
    ids[:, 80:] = 1
    b = hybrid_attention(q, k, v, seq_ids_BS=ids, impl="triton")
    ref = reference.hybrid_attention(q.cpu(), k.cpu(), v.cpu(), sliding_window=None, seq_ids_BS=ids.cpu())
    assert rel_err(b, ref) < 2e-3 and rel_err(a, ref) > 1e-1


def test_compiled_flex_compiles_each_variant_once_not_each_length(device):
    """New lengths, query offsets and packings must not recompile FlexAttention once each variant ran once.

    A whole pipeline runs in one process and TorchDynamo stops compiling a function after its
    recompile limit: on 2026-12-01 a mask that captured the key length as a Python int recompiled
    at every new packed length until the limit, and every later stage ran the unfused fallback.
    On CPU the eager backend traces the same guards as Inductor (which the GPU runs, with gradients
    and bf16 only: each compile there takes seconds).
    """
    import torch._dynamo

    from alignment.kernels import attention

    torch._dynamo.reset()
    attention._mask_cache.clear()
    gpu = device.type == "cuda"
    fn = attention.compile_flex(backend="inductor" if gpu else "eager")
    gen = torch.Generator().manual_seed(0)

    def call(L, S, window, packed, dtype, grad):
        # grad mode is a guard of its own (training vs no_grad); FlexAttention has no CPU backward, so
        # there the inputs themselves never require grad
        q = torch.randn(2, 4, S, 16, generator=gen).to(device, dtype).requires_grad_(grad and gpu)
        k, v = (torch.randn(2, 2, L, 16, generator=gen).to(device, dtype).requires_grad_(grad and gpu) for _ in range(2))
        ids = seq_ids(2, L, gen).to(device) if packed else None
        bm = attention._block_mask(2, S, L, window, ids, device)
        with torch.set_grad_enabled(grad):
            out = fn(q, k, v, block_mask=bm, enable_gqa=True)
        if grad and gpu:
            out.sum().backward()
        return out

    variants = [(w, p, d, g) for w in (None, 16) for p in (False, True)
                for d in ((torch.bfloat16,) if gpu else (torch.float32, torch.bfloat16)) for g in (False, True)]
    try:
        for v in variants:  # compiles each variant once (dynamic shapes), and once more for a query offset
            call(136, 136, *v)  # (S == L at the first compile makes the two sizes one symbol); only
            if not v[-1]:       # sampling has an offset (a cached prefix), training never does
                call(200, 140, *v)
        assert torch._dynamo.config.recompile_limit >= 2 * len(variants)
        with torch.compiler.set_stance("fail_on_recompile"):
            for v in variants:
                out = call(264, 264, *v)
                if not v[-1]:
                    call(300, 170, *v)  # queries are the last 170 of 300 keys (a cached prefix)
                assert out.shape == (2, 4, 264, 16)
    finally:
        torch._dynamo.reset()
        attention._mask_cache.clear()


@pytest.mark.parametrize("S,L,window,packed", [(100, 100, None, True), (100, 100, 13, True), (37, 100, 20, True),
                                               (96, 96, None, False), (61, 99, 9, False), (100, 100, 40, True)])
def test_block_mask_from_ranges_is_exact_per_element(S, L, window, packed):
    # Blocks of 8 so that these sizes hold empty, full and partial blocks; full blocks skip mask_mod
    # and empty ones are never computed, so the mask the kernel applies must equal mask_mod everywhere.
    from alignment.kernels.attention import block_mask_from_ranges

    B, blk = 2, 8
    gen = torch.Generator().manual_seed(S * L + (window or 0))
    ids = seq_ids(B, L, gen) if packed else None
    off = L - S

    def mask_mod(b, h, q, k):
        qp = q + off
        keep = (k <= qp) & ((qp - k < window) if window else True)
        return keep & (ids[b, qp] == ids[b, k]) if packed else keep

    bm = block_mask_from_ranges(mask_mod, S, L, window, ids, "cpu", block=blk)
    b_, q_, k_ = torch.meshgrid(torch.arange(B), torch.arange(S), torch.arange(L), indexing="ij")
    want = mask_mod(b_, 0, q_, k_)
    if not packed:
        want = want.expand(B, S, L)
    got = torch.zeros(B, S, L, dtype=torch.bool)
    kinds = {"partial": 0, "full": 0}
    for b in range(B):
        bb = min(b, bm.kv_num_blocks.shape[0] - 1)
        for i in range(-(-S // blk)):
            qs = slice(i * blk, min((i + 1) * blk, S))
            for kind, num, idx in (("partial", bm.kv_num_blocks, bm.kv_indices),
                                   ("full", bm.full_kv_num_blocks, bm.full_kv_indices)):
                for j in idx[bb, 0, i, : num[bb, 0, i]].tolist():
                    ks = slice(j * blk, min((j + 1) * blk, L))
                    got[b, qs, ks] = want[b, qs, ks] if kind == "partial" else True
                    kinds[kind] += 1
    assert torch.equal(got, want)
    assert kinds["partial"] > 0
    assert kinds["full"] > 0 or (window is not None and window < 2 * blk)  # a narrow window fills no block
    # the shapes FlexAttention expects: [B or 1, 1, q blocks] counts, [.., k blocks] indices
    assert bm.kv_indices.shape[-2:] == (-(-S // blk), -(-L // blk))
