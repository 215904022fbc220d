"""Batches of varying length through the model: FlexAttention shape buckets on vs off.

    python bench/attention_shapes.py                  # on a GPU: small preset, bf16, 48 batches
    python bench/attention_shapes.py --batches 8      # CPU (tiny preset, forward only): a smoke run

What it models: the reward model's scoring and training, DPO's reference log-probs and steps and the
eval's prefills feed the model right-padded batches whose width changes every batch. Each new width
costs FlexAttention a BlockMask and, compiled, a recompile (past dynamo's recompile limit, the eager
fallback). ``alignment.kernels.attention.SEQ_BUCKET`` pads a full-sequence call to a multiple of 128
so a run meets a handful of shapes. Both settings run here, in this process, on the same batch
widths (dynamo reset between them): forward-only (scoring) and forward+backward (training) tokens/s,
the ratio, and dynamo's recompile count.
Not a test: prints a table; numbers depend on the machine (name it when you report them).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import alignment  # noqa: F401
import alignment.kernels.attention as attn
from alignment.model import YiLightningForCausalLM, load_preset


def run(model, widths: list[int], batch: int, vocab: int, device: str, train: bool) -> tuple[float, int]:
    """Tokens/s over ``widths`` (one batch each; the first is warm-up) and the recompiles it caused."""
    from torch._dynamo.utils import counters

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    before = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    tokens, t0 = 0, None
    for i, w in enumerate(widths):
        x = torch.randint(0, vocab, (batch, w), device=device)
        mask = torch.ones_like(x)
        mask[batch // 2:, w - w // 4:] = 0  # right padding on half the rows, as a collator makes
        if i == 1:
            sync()
            t0 = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            model(input_ids=x, attention_mask=mask, labels=x, use_cache=False).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=x, attention_mask=mask, use_cache=False)
        if i >= 1:
            tokens += batch * w
    sync()
    after = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    return tokens / (time.perf_counter() - t0), after - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="model preset (default: small on a GPU, tiny on CPU)")
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-len", type=int, default=96)
    ap.add_argument("--max-len", type=int, default=720)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = args.preset or ("small" if device == "cuda" else "tiny")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rng = random.Random(0)
    widths = [rng.randint(args.min_len, args.max_len) for _ in range(args.batches)]
    torch.manual_seed(0)
    cfg = load_preset(preset, impl="auto", max_position_embeddings=max(2048, args.max_len))
    model = YiLightningForCausalLM(cfg).to(device=device, dtype=dtype)
    modes = [("forward (scoring)", False)] + ([("forward+backward (training)", True)] if device == "cuda" else [])
    print(f"{device} {torch.cuda.get_device_name() if device == 'cuda' else ''} preset={preset} batch={args.batch} "
          f"{len(widths)} batches, widths {min(widths)}-{max(widths)} ({len(set(widths))} distinct)")
    print(f"{'mode':30s} {'bucket':>6s} {'tokens/s':>12s} {'recompiles':>10s}")
    for name, train in modes:
        model.train(train)
        res = {}
        for bucket in (0, 128):  # the baseline first: a warm compile cache would only help it
            torch._dynamo.reset()
            attn._mask_cache.clear()
            attn.SEQ_BUCKET = bucket
            res[bucket] = run(model, widths, args.batch, cfg.vocab_size, device, train)
            print(f"{name:30s} {bucket:6d} {res[bucket][0]:12,.0f} {res[bucket][1]:10d}")
        print(f"{name:30s} bucket 128 / off: {res[128][0] / res[0][0]:.2f}x")
    attn.SEQ_BUCKET = 128


if __name__ == "__main__":
    main()
