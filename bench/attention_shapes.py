"""Batches of varying width through the model vs one fixed width, same tokens: what a new shape costs.

    python bench/attention_shapes.py                  # on a GPU: small preset, bf16, 32 batches
    python bench/attention_shapes.py --batches 6      # CPU (tiny preset, forward only): a smoke run

What it models: the reward model's scoring and training, DPO's reference log-probs and steps and the
eval's prefills feed the model right-padded batches whose width changes every batch, while SFT packs
fixed-width blocks. Both run here, in this process: the same number of batches and tokens, once with
every batch at its own width and once with every batch at the mean width; forward-only (scoring) and
forward+backward (training) tokens/s, and the ratio (the price of varying shapes).

Measured on one H200 (2026-12-01, small preset, bf16, batch 16, 32 widths in 137-712, before the
fixed-width row existed): forward over varying widths 19,620 tokens/s and forward+backward 10,008,
where bench/model.py's fixed B 8 x T 2,048 forward+backward gives ~130,000 (GPU.md): other batch and
width, so not yet a measure of what varying costs; the fixed-width row here is. Padding each
FlexAttention call to a multiple of 128 (fewer distinct attention shapes) made the varying forward
slower (17,552 tokens/s, 0.89x) and was dropped.
Not a test: prints a table; numbers depend on the machine (name it when you report them).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import alignment  # noqa: F401
from alignment.model import YiLightningForCausalLM, load_preset


def run(model, widths: list[int], batch: int, vocab: int, device: str, train: bool) -> float:
    """Tokens/s over ``widths`` (one batch each; the first is warm-up)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
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
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="model preset (default: small on a GPU, tiny on CPU)")
    ap.add_argument("--batches", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-len", type=int, default=96)
    ap.add_argument("--max-len", type=int, default=720)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = args.preset or ("small" if device == "cuda" else "tiny")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rng = random.Random(0)
    widths = [rng.randint(args.min_len, args.max_len) for _ in range(args.batches)]
    fixed = [round(sum(widths) / len(widths))] * len(widths)
    torch.manual_seed(0)
    cfg = load_preset(preset, impl="auto", max_position_embeddings=max(2048, args.max_len))
    model = YiLightningForCausalLM(cfg).to(device=device, dtype=dtype)
    modes = [("forward (scoring)", False)] + ([("forward+backward (training)", True)] if device == "cuda" else [])
    print(f"{device} {torch.cuda.get_device_name() if device == 'cuda' else ''} preset={preset} batch={args.batch} "
          f"{len(widths)} batches, widths {min(widths)}-{max(widths)} ({len(set(widths))} distinct), fixed {fixed[0]}")
    print(f"{'mode':30s} {'widths':>8s} {'tokens/s':>12s}")
    for name, train in modes:
        model.train(train)
        fix = run(model, fixed, args.batch, cfg.vocab_size, device, train)  # the baseline: one shape
        var = run(model, widths, args.batch, cfg.vocab_size, device, train)
        print(f"{name:30s} {'fixed':>8s} {fix:12,.0f}")
        print(f"{name:30s} {'varying':>8s} {var:12,.0f}")
        print(f"{name:30s} varying / fixed: {var / fix:.2f}x")


if __name__ == "__main__":
    main()
