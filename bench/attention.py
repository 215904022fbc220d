"""Benchmark hybrid attention on GPU: FlexAttention (ours) vs SDPA with the dense boolean mask.

Run on a GPU:  ``python bench/attention.py``

Cases (bf16, B=8, S=2048, 16 query heads, 4 KV heads, head dim 128): full causal, sliding window
512, packing (4 samples per row, block-causal), window + packing. ``sdpa_mask`` is the torch path
(reference.hybrid_attention: SDPA with an explicit [B, 1, S, S] mask, which rules out the flash
kernel); ``sdpa_causal`` is flash SDPA with is_causal=True, a ceiling valid only for full causal.
Timing forward+backward, median of triton.testing.do_bench.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def main():
    from triton.testing import do_bench

    from alignment.kernels import hybrid_attention, reference

    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    B, H, Kh, S, Dh = 8, 16, 4, 2048, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, S, Dh, device="cuda", generator=g).bfloat16().requires_grad_()
    k = torch.randn(B, Kh, S, Dh, device="cuda", generator=g).bfloat16().requires_grad_()
    v = torch.randn(B, Kh, S, Dh, device="cuda", generator=g).bfloat16().requires_grad_()
    do = torch.randn_like(q)
    ids = (torch.arange(S, device="cuda") // (S // 4)).expand(B, S).contiguous()
    cases = [("causal", None, None), ("window512", 512, None), ("packed4", None, ids), ("window+packed", 512, ids)]
    print(f"{'case':14} {'impl':12} {'fwd ms':>8} {'f+b ms':>8} {'rel err':>9}")
    for label, win, sid in cases:
        impls = [("flex", lambda: hybrid_attention(q, k, v, sliding_window=win, seq_ids_BS=sid, impl="triton")),
                 ("sdpa_mask", lambda: reference.hybrid_attention(q, k, v, sliding_window=win, seq_ids_BS=sid))]
        if win is None and sid is None:
            impls.append(("sdpa_causal", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)))
        with torch.no_grad():
            ref = reference.hybrid_attention(q, k, v, sliding_window=win, seq_ids_BS=sid).float()
        for name, fn in impls:
            with torch.no_grad():
                err = ((fn().float() - ref).norm() / ref.norm()).item()
                t_f = do_bench(fn, warmup=10, rep=100, return_mode="median")

            def fb(fn=fn):
                for t in (q, k, v):
                    t.grad = None
                fn().backward(do)

            t_fb = do_bench(fb, warmup=10, rep=100, return_mode="median")
            print(f"{label:14} {name:12} {t_f:8.3f} {t_fb:8.3f} {err:9.2e}")


if __name__ == "__main__":
    main()
