"""Benchmark fused chunked linear + cross-entropy against the PyTorch version: time and peak memory.

Run on a GPU:  ``python bench/linear_ce.py [--tokens 16384] [--hidden 1024,2048] [--vocab 100352]``

Both return per-token float32 log-probs and are timed forward+backward (upstream grad: a random
per-token vector, as SFT means and DPO sums give). ``torch`` is ``reference.linear_cross_entropy``
(the full [N, V] logits in bf16, then fp32 log-softmax); ``torch_compile`` is the same under
torch.compile; ``ours`` is ``linear_cross_entropy(impl="triton")``. Peak memory is
torch.cuda.max_memory_allocated during one forward+backward above what was allocated before.
"""

from __future__ import annotations

import argparse

import torch


def bench(fn, leaves, dl):
    from triton.testing import do_bench

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn().backward(dl)

    fwd_bwd()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.no_grad():
        t_f = do_bench(fn, warmup=10, rep=100, return_mode="median")
    t_fb = do_bench(fwd_bwd, warmup=10, rep=100, return_mode="median")
    return t_f, t_fb, peak


def main():
    from alignment.kernels import linear_cross_entropy, reference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", default="1024,2048")
    p.add_argument("--vocab", type=int, default=100352)
    args = p.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    compiled = torch.compile(reference.linear_cross_entropy)
    rows = []
    for D in (int(d) for d in args.hidden.split(",")):
        N, V = args.tokens, args.vocab
        g = torch.Generator(device="cuda").manual_seed(D)
        h = torch.randn(N, D, device="cuda", generator=g).bfloat16().requires_grad_()
        w = (torch.randn(V, D, device="cuda", generator=g) / D**0.5).bfloat16().requires_grad_()
        labels = torch.randint(0, V, (N,), device="cuda", generator=g)
        labels[::5] = -100
        dl = torch.randn(N, device="cuda", generator=g)
        with torch.no_grad():
            err = ((linear_cross_entropy(h, w, labels, impl="triton") - reference.linear_cross_entropy(h, w, labels))
                   .norm() / reference.linear_cross_entropy(h, w, labels).norm()).item()
        print(f"D={D}: ours vs torch logp rel err {err:.2e}")
        for name, fn in (("torch", lambda: reference.linear_cross_entropy(h, w, labels)),
                         ("torch_compile", lambda: compiled(h, w, labels)),
                         ("ours", lambda: linear_cross_entropy(h, w, labels, impl="triton"))):
            try:
                rows.append((D, name, *bench(fn, [h, w], dl)))
            except torch.OutOfMemoryError:
                rows.append((D, name, float("nan"), float("nan"), float("nan")))
            torch.cuda.empty_cache()
    print(f"\nN={args.tokens} V={args.vocab} bf16")
    print(f"{'D':>5} {'impl':14} {'fwd ms':>8} {'f+b ms':>8} {'peak MiB':>9} {'peak vs torch':>14} {'f+b speedup':>12}")
    for D, name, tf, tfb, peak in rows:
        t = next(r for r in rows if r[0] == D and r[1] == "torch")
        print(f"{D:5d} {name:14} {tf:8.2f} {tfb:8.2f} {peak:9.0f} {peak / t[4]:14.3f} {t[3] / tfb:11.2f}x")


if __name__ == "__main__":
    main()
