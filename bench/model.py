"""Benchmark of the Yi-Lightning model: training throughput, peak memory and KV-cache size.

    python bench/model.py                       # CPU: tiny preset; KV table for tiny/small/paper_like
    python bench/model.py --preset small        # on a GPU: small preset, bf16, impl auto vs torch
    python bench/model.py --kv-only             # just the KV-cache table

1. Forward+backward tokens/s and peak memory for one preset, against a named baseline in the same
   run: on CUDA the fused kernels (`impl=auto`) vs the PyTorch reference (`impl=torch`); on CPU
   only the reference exists, so it prints that alone.
2. KV-cache bytes vs the all-full-attention, no-sharing baseline at 4K/16K/64K tokens: analytic
   (`kv_cache_bytes`) and measured (bytes held by a live `YiLightningCache` after the sequence was
   written through `update_layer` in chunks, the code path attention uses). For `tiny`, the 4K row
   is also measured by a real chunked prefill through the model.
Not a test: prints a table; numbers depend on the machine (name it when you report them).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import alignment  # noqa: F401
from alignment.model import YiLightningCache, YiLightningForCausalLM, kv_cache_bytes, kv_cache_bytes_all_full, load_preset

SEQ_LENS = (4096, 16384, 65536)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(preset: str, impl: str, device: str, dtype, batch: int, seq: int, steps: int) -> dict:
    """Forward+backward (no optimizer) tokens/s and peak memory of one configuration."""
    torch.manual_seed(0)
    cfg = load_preset(preset, impl=impl, max_position_embeddings=max(seq, 2048))
    model = YiLightningForCausalLM(cfg).to(device=device, dtype=dtype).train()
    x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = peak_rss_mib()
    model(x, labels=x, use_cache=False).loss.backward()  # warm-up (kernel compile / autotune)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model(x, labels=x, use_cache=False).loss.backward()
    sync()
    dt = (time.perf_counter() - t) / steps
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_what = "GPU max_memory_allocated"
    else:
        peak = peak_rss_mib() - rss0
        peak_what = "process peak RSS growth"
    n_params = sum(p.numel() for p in model.parameters())
    del model, x
    if device == "cuda":
        torch.cuda.empty_cache()  # the next configuration's peak must not include this one
    return {"impl": impl, "tokens_per_s": batch * seq / dt, "step_s": dt, "peak_mib": peak, "peak_what": peak_what,
            "params_m": n_params / 1e6}


def measured_kv_bytes(cfg, seq_len: int, chunk: int = 8192, dtype=torch.bfloat16) -> int:
    """Write `seq_len` positions of K/V (real head shapes, batch 1) through a live cache; return its bytes."""
    cache = YiLightningCache(cfg)
    owners = sorted(set(cfg.kv_plan()))
    done = 0
    while done < seq_len:
        n = min(chunk, seq_len - done)
        kv = torch.zeros(1, cfg.num_key_value_heads, n, cfg.head_dim, dtype=dtype)
        for layer in owners:
            cache.update_layer(layer, kv, kv)
        done += n
    return cache.nbytes()


@torch.no_grad()
def model_prefill_kv_bytes(cfg, seq_len: int, chunk: int = 512) -> int:
    """Chunked prefill of random tokens through the real model (fp32); bytes the cache then holds."""
    torch.manual_seed(0)
    model = YiLightningForCausalLM(cfg).eval()
    cache = YiLightningCache(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, seq_len))
    for s in range(0, seq_len, chunk):
        model(x[:, s : s + chunk], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache.nbytes()


def kv_table(presets, measure_paper: bool) -> None:
    print("\n== KV cache vs all-full attention without sharing (batch 1, bf16) ==")
    print(f"{'preset':<11} {'tokens':>7} {'all-full MiB':>13} {'ours MiB':>10} {'ratio':>9} {'measured MiB':>13} {'match':>6}")
    for name in presets:
        cfg = load_preset(name, max_position_embeddings=max(SEQ_LENS))
        for n in SEQ_LENS:
            base = kv_cache_bytes_all_full(cfg, n)
            ours = kv_cache_bytes(cfg, n)
            if name == "paper_like" and not measure_paper:
                meas, match = float("nan"), "-"
            else:
                m = measured_kv_bytes(cfg, n)
                meas, match = m / 2**20, "yes" if m == ours else "NO"
            print(f"{name:<11} {n:>7} {base / 2**20:>13.1f} {ours / 2**20:>10.1f} {ours / base:>9.6f} {meas:>13.1f} {match:>6}")
    cfg = load_preset("tiny")
    n = 4096
    m = model_prefill_kv_bytes(load_preset("tiny", max_position_embeddings=n), n)
    ours = kv_cache_bytes(cfg, n, dtype_bytes=4)
    print(f"tiny model prefill at {n} tokens (fp32): live {m} B, analytic {ours} B, "
          f"ratio {m / kv_cache_bytes_all_full(cfg, n, dtype_bytes=4):.6f}, match {'yes' if m == ours else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="throughput preset (default: tiny on CPU, small on CUDA)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--kv-only", action="store_true")
    ap.add_argument("--measure-paper", action="store_true", help="also measure paper_like live bytes (~2 GiB RAM)")
    args = ap.parse_args()

    if not args.kv_only:
        cuda = torch.cuda.is_available()
        device = "cuda" if cuda else "cpu"
        preset = args.preset or ("small" if cuda else "tiny")
        batch = args.batch or (8 if cuda else 4)
        seq = args.seq or (2048 if cuda else 256)
        dtype = torch.bfloat16 if cuda else torch.float32
        impls = ("auto", "torch") if cuda else ("torch",)
        name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
        print(f"== forward+backward: preset={preset} batch={batch} seq={seq} dtype={dtype} on {name} ==")
        rows = [throughput(preset, impl, device, dtype, batch, seq, args.steps) for impl in impls]
        for r in rows:
            print(f"impl={r['impl']:<6} params={r['params_m']:.1f}M  {r['tokens_per_s']:>10.0f} tokens/s  "
                  f"step {r['step_s'] * 1e3:.1f} ms  peak {r['peak_mib']:.0f} MiB ({r['peak_what']})")
        if len(rows) == 2:
            print(f"speed-up impl=auto vs impl=torch (baseline): {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
    kv_table(("tiny", "small", "paper_like"), args.measure_paper)


if __name__ == "__main__":
    main()
