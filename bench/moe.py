"""Benchmark the fused Triton MoE experts against the usual alternatives, in one run, one table.

Run on a GPU:  ``python bench/moe.py [--shapes anchor,fine,decode] [--out results.json]``

Implementations (all on the same bf16 inputs and the same routing; weights in the Qwen3-MoE
layout w_gate_up [E, 2I, H], w_down [E, H, I], which is also ours):
    loop         loop over experts with index_select / index_add (the textbook version)
    hf_eager     transformers' Qwen3MoeExperts, experts_implementation="eager"
    hf_grouped   transformers' Qwen3MoeExperts, experts_implementation="grouped_mm"
    grouped_mm   sort + torch._grouped_mm by hand (gather, 2 grouped GEMMs, weighted index_add)
    ours         alignment.kernels.moe_experts(impl="triton")
    dense        the dense-matmul ceiling: the same active FLOPs as two plain matmuls
                 [T*K, H] @ [H, 2I] and [T*K, I] @ [I, H] (no routing at all)

TFLOP/s counts only the active expert matmuls: 6*T*K*H*I forward, 3x that forward+backward.
Peak memory is torch.cuda.max_memory_allocated during one forward+backward above what was
allocated before (inputs and weights excluded). Timing: triton.testing.do_bench (CUDA events,
median). Shapes (issue 4): anchor H=2048 I=768 E=64 top-8 T=16,384; fine E=128 top-16 I=384;
decode T=1,024 at the anchor's H/I/E/K. Routing: softmax of random router logits, top-k,
renormalized (roughly balanced, as after aux-loss training).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

SHAPES = {
    "anchor": dict(T=16384, H=2048, I=768, E=64, K=8),
    "fine": dict(T=16384, H=2048, I=384, E=128, K=16),
    "decode": dict(T=1024, H=2048, I=768, E=64, K=8),
}


def make_inputs(T, H, I, E, K, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, H, device="cuda", generator=g).bfloat16()
    w_gu = (torch.randn(E, 2 * I, H, device="cuda", generator=g) / H**0.5).bfloat16()
    w_down = (torch.randn(E, H, I, device="cuda", generator=g) / I**0.5).bfloat16()
    logits = torch.randn(T, E, device="cuda", generator=g)
    w, idx = torch.softmax(logits, -1).topk(K, dim=-1)
    return x, w_gu, w_down, idx, (w / w.sum(-1, keepdim=True)).float()


def loop_experts(x, w_gu, w_down, idx, w):
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    I = w_down.shape[2]
    for e in range(w_gu.shape[0]):
        tok, slot = torch.where(idx == e)
        xe = x.index_select(0, tok)
        gu = xe @ w_gu[e].t()
        h = F.silu(gu[:, :I]) * gu[:, I:]
        y.index_add_(0, tok, (h @ w_down[e].t()).float() * w[tok, slot, None])
    return y.to(x.dtype)


def sort_grouped_mm(x, w_gu, w_down, idx, w):
    K = idx.shape[1]
    E = w_gu.shape[0]
    I = w_down.shape[2]
    flat = idx.reshape(-1)
    eids, perm = torch.sort(flat)
    tok = perm // K
    offs = torch.cumsum(torch.histc(eids.int(), bins=E, min=0, max=E - 1), 0, dtype=torch.int32)
    gu = torch._grouped_mm(x[tok], w_gu.transpose(1, 2), offs=offs)
    h = F.silu(gu[:, :I]) * gu[:, I:]
    o = torch._grouped_mm(h, w_down.transpose(1, 2), offs=offs)
    o = o * w.reshape(-1)[perm, None].to(o.dtype)
    return torch.zeros_like(x).index_add_(0, tok, o)


def hf_experts(kind, H, I, E, K, w_gu, w_down):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    cfg = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K)
    cfg._experts_implementation = kind
    mod = Qwen3MoeExperts(cfg).cuda().bfloat16()
    with torch.no_grad():
        mod.gate_up_proj.copy_(w_gu)
        mod.down_proj.copy_(w_down)
    return mod


def bench_one(name, fn, leaves, flops_fwd, dy):
    from triton.testing import do_bench

    def fwd():
        with torch.no_grad():
            return fn()

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        fn().backward(dy)

    fwd_bwd()  # warm-up (compiles, autotunes)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    t_f = do_bench(fwd, warmup=25, rep=200, return_mode="median")
    t_fb = do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median")
    return dict(impl=name, fwd_ms=t_f, fwd_bwd_ms=t_fb, fwd_tflops=flops_fwd / t_f / 1e9,
                fwd_bwd_tflops=3 * flops_fwd / t_fb / 1e9, peak_mib=peak)


def run_shape(label, T, H, I, E, K, impls):
    from alignment.kernels import moe_experts

    x, w_gu, w_down, idx, w = make_inputs(T, H, I, E, K)
    flops = 6 * T * K * H * I
    dy = torch.randn_like(x)
    # correctness first: ours against the hand grouped_mm on these very inputs
    with torch.no_grad():
        ref = sort_grouped_mm(x, w_gu, w_down, idx, w).float()
        got = moe_experts(x, w_gu, w_down, idx, w, impl="triton").float()
    err = ((got - ref).norm() / ref.norm()).item()
    rows = []
    for name in impls:
        xl, gl, dl = (t.clone().requires_grad_() for t in (x, w_gu, w_down))
        wl = w.clone().requires_grad_()
        leaves = [xl, gl, dl, wl]
        if name == "loop":
            fn = lambda: loop_experts(xl, gl, dl, idx, wl)  # noqa: E731
        elif name in ("hf_eager", "hf_grouped"):
            mod = hf_experts("eager" if name == "hf_eager" else "grouped_mm", H, I, E, K, w_gu, w_down)
            wb = w.bfloat16().requires_grad_()
            leaves = [xl, wb, *mod.parameters()]
            fn = lambda mod=mod, wb=wb: mod(xl, idx, wb)  # noqa: E731
        elif name == "grouped_mm":
            fn = lambda: sort_grouped_mm(xl, gl, dl, idx, wl)  # noqa: E731
        elif name == "ours":
            fn = lambda: moe_experts(xl, gl, dl, idx, wl, impl="triton")  # noqa: E731
        elif name == "dense":
            a1 = torch.randn(T * K, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            b1 = (torch.randn(H, 2 * I, device="cuda") / H**0.5).bfloat16().requires_grad_()
            b2 = (torch.randn(I, H, device="cuda") / I**0.5).bfloat16().requires_grad_()
            leaves = [a1, b1, b2]
            dyd = torch.randn(T * K, H, device="cuda", dtype=torch.bfloat16)
            fn = lambda: (a1 @ b1)[:, :I] @ b2  # noqa: E731
            rows.append(dict(shape=label, **bench_one(name, fn, leaves, flops, dyd)))
            continue
        else:
            raise ValueError(name)
        rows.append(dict(shape=label, **bench_one(name, fn, leaves, flops, dy)))
        torch.cuda.empty_cache()
    return rows, err


SWEEP = {  # candidates per kernel, tried one kernel at a time from the current _GEMM_CONFIGS
    "gate_up": [(64, 64, 4, 4), (128, 64, 8, 3), (64, 128, 8, 3)],
    "scatter": [(128, 64, 4, 4), (256, 64, 8, 3), (128, 128, 8, 3)],
    "down_bwd": [(128, 64, 8, 3), (64, 128, 8, 3)],
    "wgrad": [(128, 128, 8, 4), (128, 256, 8, 3), (256, 128, 8, 3)],
}


def sweep(label):
    """Time ours forward+backward at one shape for each candidate tile config (--sweep)."""
    from triton.testing import do_bench

    from alignment.kernels import moe as moe_mod
    from alignment.kernels import moe_experts

    x, w_gu, w_down, idx, w = make_inputs(**SHAPES[label])
    leaves = [t.clone().requires_grad_() for t in (x, w_gu, w_down, w)]
    dy = torch.randn_like(x)
    base = dict(moe_mod._GEMM_CONFIGS)

    def run():
        for t in leaves:
            t.grad = None
        moe_experts(leaves[0], leaves[1], leaves[2], idx, leaves[3], impl="triton").backward(dy)

    def timed():
        with torch.no_grad():
            tf = do_bench(lambda: moe_experts(x, w_gu, w_down, idx, w, impl="triton"), warmup=10, rep=60,
                          return_mode="median")
        return tf, do_bench(run, warmup=10, rep=60, return_mode="median")

    print(f"sweep {label}: base {base} -> fwd/f+b ms {timed()}")
    for kern, cands in SWEEP.items():
        for c in cands:
            moe_mod._GEMM_CONFIGS[kern] = c
            try:
                print(f"  {kern} {c}: fwd/f+b ms {timed()}")
            except Exception as exc:  # e.g. out of shared memory for a big tile
                print(f"  {kern} {c}: failed {type(exc).__name__}: {str(exc)[:80]}")
            moe_mod._GEMM_CONFIGS[kern] = base[kern]


def profile(label):
    """Per-kernel CUDA time of ours forward+backward at one shape (--profile), from torch.profiler."""
    from alignment.kernels import moe_experts

    x, w_gu, w_down, idx, w = make_inputs(**SHAPES[label])
    leaves = [t.clone().requires_grad_() for t in (x, w_gu, w_down, w)]
    dy = torch.randn_like(x)

    def run():
        for t in leaves:
            t.grad = None
        moe_experts(leaves[0], leaves[1], leaves[2], idx, leaves[3], impl="triton").backward(dy)

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40))


def train_step(preset, batch=4, seq=2048, steps=6):
    """Full training step of the in-repo model, impl=torch vs impl=triton (--train-step PRESET).

    bf16 weights, fused AdamW, random token ids as inputs and labels. MFU counts 6 * active
    parameters (experts scaled by top-k / E, input embedding excluded) per token against the
    784 TFLOP/s dense bf16 ceiling measured on the lent H100 (as in docs/scaling.md).
    """
    import time

    from alignment.model import YiLightningForCausalLM, load_preset

    out = {}
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        cfg = load_preset(preset, impl=impl)
        model = YiLightningForCausalLM(cfg).cuda().bfloat16()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")
        k_over_e = cfg.router_top_k / cfg.num_experts
        active = 0
        for name, prm in model.named_parameters():
            if "embed_tokens" in name:
                continue
            active += prm.numel() * (k_over_e if prm.dim() == 3 else 1)
        times = []
        for _ in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t = sorted(times[2:])[len(times[2:]) // 2]
        tok_s = batch * seq / t
        out[impl] = tok_s
        print(f"train step {preset} impl={impl}: {t * 1e3:.1f} ms, {tok_s:,.0f} tokens/s, "
              f"MFU {6 * active * tok_s / 784e12:.1%} (active params {active / 1e6:.0f}M), "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        del model, opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(f"train step speedup triton/torch: {out['triton'] / out['torch']:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-step", default=None, help="instead of the table, time a training step of this preset")
    p.add_argument("--profile", default=None, help="instead of the table, profile ours per kernel at this shape")
    p.add_argument("--sweep", default=None, help="instead of the table, sweep tile configs at this shape")
    p.add_argument("--shapes", default="anchor,fine,decode")
    p.add_argument("--impls", default="loop,hf_eager,hf_grouped,grouped_mm,ours,dense")
    p.add_argument("--out", default=None, help="write all rows as JSON here")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    if args.sweep:
        return sweep(args.sweep)
    if args.profile:
        return profile(args.profile)
    if args.train_step:
        return train_step(args.train_step)
    all_rows = []
    for label in args.shapes.split(","):
        rows, err = run_shape(label, **SHAPES[label], impls=args.impls.split(","))
        print(f"{label} {SHAPES[label]}: ours vs sort+grouped_mm forward rel err {err:.2e}")
        all_rows += rows
    if args.out:
        with open(args.out, "w") as f:
            json.dump(all_rows, f, indent=1)
    print(f"\n{'shape':8} {'impl':11} {'fwd ms':>8} {'fwd TF/s':>9} {'f+b ms':>8} {'f+b TF/s':>9} {'peak MiB':>9} {'f+b vs hf_grouped':>18}")
    for r in all_rows:
        hf = next((q for q in all_rows if q["shape"] == r["shape"] and q["impl"] == "hf_grouped"), None)
        ratio = f"{hf['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x" if hf else "-"
        print(f"{r['shape']:8} {r['impl']:11} {r['fwd_ms']:8.3f} {r['fwd_tflops']:9.1f} {r['fwd_bwd_ms']:8.3f} "
              f"{r['fwd_bwd_tflops']:9.1f} {r['peak_mib']:9.0f} {ratio:>18}")


if __name__ == "__main__":
    main()
