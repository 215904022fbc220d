"""Sampling throughput: the native sampler vs transformers generate (the hf backend) and vLLM, one run.

Same model (our YiLightningForCausalLM, random init, a preset from recipes/model), same prompts,
``--n`` samples per prompt (16: the online-DPO setting), every variant timed in this process.
Prints generated tokens/s, the ratio to hf, and peak memory (GPU: torch's peak allocated; CPU:
the process's peak RSS so far, which only grows, so read it per run with care).

    python bench/sampling.py                              # tiny preset on CPU
    python bench/sampling.py --preset small --device cuda # the H100 figure (native >= 10x hf target)

Variants: ``hf`` (generate, num_return_sequences=n), ``native/model`` (one shared prefill, the
model's own forward and cache, finished rows dropped), ``native/static`` (fixed-shape decode),
``native/static+graph`` (the same, captured in a CUDA graph; CUDA only) and ``vllm`` (the same
weights saved to a temporary folder and loaded by vLLM, eager as recipes/sampler/vllm.yaml; CUDA
and an importable vllm only, else skipped with the reason printed). vLLM's memory is used in its
own engine process, so its row reads the device's used memory (``torch.cuda.mem_get_info``) while
the engine runs, its KV-cache reservation (``gpu_memory_utilization``) included. Random weights rarely
emit EOS, so every sample runs to ``--max-new-tokens``; the count is taken from the results.

The tokenizer is a word-level one over the model's whole vocabulary (token ``t<id>``), built
here, so the benchmark needs no data files and every id the model emits decodes.

The pipeline's own setting instead of a random model: ``--upcycled`` samples from h100_small's
model (SmolLM2-135M-Instruct upcycled as its base stage does, with its real tokenizer and chat
format) on task-family prompts, so samples end at EOS at realistic, varied lengths;
``--temperature``/``--top-p`` set the eval's or online DPO's sampling; ``--profile`` profiles one
more generate of each native variant and prints where its time goes (kernel categories of
alignment/train/profile.py, and the host time no kernel covers). Batch width = prompts x n::

    python bench/sampling.py --device cuda --upcycled --prompts 32 --n 16 --max-new-tokens 256 \
        --variants native/static+graph --profile        # 512 rows, online DPO's setting
    python bench/sampling.py --device cuda --upcycled --prompts 256 --n 4 --temperature 0.8 --top-p 0.95 \
        --max-new-tokens 160 --variants native/static+graph    # 1,024 rows, the eval's pass@4 setting
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.model import YiLightningForCausalLM, load_preset  # noqa: E402
from alignment.model.upcycle import SMOLLM2_GGUF  # noqa: E402
from alignment.sampling import SamplingParams, build_sampler  # noqa: E402


def word_tokenizer(vocab_size: int):
    """PreTrainedTokenizerFast whose ids 0..3 are specials and 4.. are the words t4, t5, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + [f"t{i}" for i in range(len(specials), vocab_size)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def upcycled_setting(gguf: str, n_prompts: int):
    """h100_small's model and tokenizer (as its base stage builds them) and task-family prompts."""
    from alignment.tasks.format import chat_render
    from alignment.tasks.problems import load_problems
    from alignment.train.pretrain import upcycled_start

    model, tok, _ = upcycled_start(gguf, dict(num_segments=8, replicas=1, top_k=8))  # h100_small's stage.base.upcycle
    render = chat_render(tok)
    return model, tok, [render(p) for p in load_problems("templates", "train", n=n_prompts, seed=0)]


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_used_mb() -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def vllm_unavailable(device: str) -> str | None:
    """Why the vllm row cannot run here, or None."""
    if not device.startswith("cuda"):
        return "vLLM runs on CUDA only"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not importable (pip install -e '.[vllm]': vLLM 0.26.x for torch 2.11)"
    return None


def profile_generate(sampler, prompts, n, params, device) -> None:
    """One more generate under torch.profiler: time by kernel category and the uncovered host time."""
    from torch.profiler import ProfilerActivity, profile

    from alignment.train.profile import breakdown

    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    before = dict(sampler.stats)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        sampler.generate(prompts, n=n, params=params)
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
    averages = prof.key_averages()
    stats = {k: v - before.get(k, 0) for k, v in sampler.stats.items()}
    print(f"    profile (one generate, {wall_ms:.0f} ms under the profiler; {stats}):")
    for cat, ms in sorted(breakdown(prof, 1, wall_ms, cuda, averages).items(), key=lambda kv: -kv[1]):
        print(f"      {cat:45s} {ms:9.1f} ms  {100 * ms / wall_ms:5.1f}%")
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(averages.table(sort_by=key, row_limit=12, max_name_column_width=60))


def run(name, cfg, model, tok, prompts, n, params, device, repeat, profile=False):
    if cfg["backend"] == "vllm":
        return run_vllm(name, cfg, model, tok, prompts, n, params, repeat)
    sampler = build_sampler(cfg, model, tok, device=device)
    # Warm-up on the very batch shapes of the timed run (2 new tokens): FlexAttention compiles once
    # per prefill shape and Triton autotunes per shape; those one-off costs are not sampling speed.
    # A CUDA graph is still captured inside the timed run (once per batch, as in real use).
    t_warm = time.perf_counter()
    sampler.generate(prompts, n=n, params=SamplingParams(max_new_tokens=2, seed=1))
    # compile_decode pays its torch.compile here, once per process: a pipeline stage pays it too
    print(f"  {name}: warm-up (compiles included) {time.perf_counter() - t_warm:.1f}s", flush=True)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dt = float("inf")
    for _ in range(repeat):  # best of `repeat`: a shared CPU box makes single timings noisy
        t0 = time.perf_counter()
        groups = sampler.generate(prompts, n=n, params=params)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = min(dt, time.perf_counter() - t0)
    tokens = sum(len(s.token_ids) for g in groups for s in g)
    out = dict(name=name, tokens=tokens, seconds=dt, tps=tokens / dt, mem=peak_memory_mb(device))
    if profile and cfg["backend"] == "native":
        profile_generate(sampler, prompts, n, params, device)
    return out


def run_vllm(name, cfg, model, tok, prompts, n, params, repeat):
    """The same model through vLLM: it loads weights itself, so they go through a save_pretrained folder."""
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        sampler = build_sampler(cfg, path)
        try:
            sampler.generate(prompts, n=n, params=SamplingParams(max_new_tokens=2, seed=1))
            dt, mem = float("inf"), 0.0
            for _ in range(repeat):
                t0 = time.perf_counter()
                groups = sampler.generate(prompts, n=n, params=params)
                dt = min(dt, time.perf_counter() - t0)
                mem = max(mem, device_used_mb())
        finally:
            sampler.close()
    tokens = sum(len(s.token_ids) for g in groups for s in g)
    return dict(name=name, tokens=tokens, seconds=dt, tps=tokens / dt, mem=mem)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, help="model preset (default: tiny on CPU, small on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 on CPU, 128 on CUDA")
    ap.add_argument("--prompt-len", type=int, default=64, help="longest prompt; others are shorter")
    ap.add_argument("--variants", default="hf,native/static+graph,native/static,native/model,vllm")
    ap.add_argument("--impl", default="auto", help="kernel switch of the model config (auto|torch|triton)")
    ap.add_argument("--repeat", type=int, default=1, help="time each variant this many times, keep the best")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--upcycled", nargs="?", const=SMOLLM2_GGUF, default=None,
                    metavar="GGUF", help="h100_small's upcycled SmolLM2 on task prompts instead of a random preset")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--profile", action="store_true", help="profile one more generate of each native variant")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    preset = args.preset or ("small" if cuda else "tiny")
    max_new = args.max_new_tokens or (128 if cuda else 64)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.upcycled:
        model, tok, prompts = upcycled_setting(args.upcycled, args.prompts)
        config, preset = model.config, "upcycled SmolLM2-135M"
        model = model.to(device=args.device, dtype=dtype).eval()
    else:
        config = load_preset(preset, impl=args.impl)
        model = YiLightningForCausalLM(config).to(device=args.device, dtype=dtype).eval()
        tok = word_tokenizer(config.vocab_size)
        g = torch.Generator().manual_seed(0)
        prompts = []
        for i in range(args.prompts):
            length = args.prompt_len - (i * args.prompt_len) // (2 * args.prompts)  # from prompt_len down to ~half
            prompts.append(" ".join(f"t{int(x)}" for x in torch.randint(4, config.vocab_size, (length,), generator=g)))
    params = SamplingParams(max_new_tokens=max_new, temperature=args.temperature, top_p=args.top_p, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {preset}: {n_params / 1e6:.1f}M params, {dtype}, kernels {args.impl}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else f" ({torch.get_num_threads()} threads)"))
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    print(f"best of {args.repeat}; workload: {args.prompts} prompts ({min(lengths)}-{max(lengths)} tokens) x {args.n} samples"
          f" (batch {args.prompts * args.n} rows) x up to {max_new} new tokens, temperature {args.temperature}, top-p {args.top_p}")

    cfgs = {
        "hf": {"backend": "hf"},
        "native/model": {"backend": "native", "decode": "model"},
        "native/static": {"backend": "native", "decode": "static", "cuda_graphs": False},
        "native/static+graph": {"backend": "native", "decode": "static", "cuda_graphs": True},
        "native/static+graph+compile": {"backend": "native", "decode": "static", "cuda_graphs": True, "compile_decode": True},
        # this process keeps the benchmark model (and the others' peaks) on the card: half for vLLM
        "vllm": {"backend": "vllm", "enforce_eager": True, "gpu_memory_utilization": 0.5},
    }
    cfgs["vllm"]["max_model_len"] = args.prompt_len + max_new + 16  # KV for this workload, not the preset's context
    rows = []
    for name in args.variants.split(","):
        if name.startswith("native/static+graph") and not cuda:
            continue
        if name == "vllm" and vllm_unavailable(args.device):
            print(f"  vllm: skipped: {vllm_unavailable(args.device)}", flush=True)
            continue
        try:
            rows.append(run(name, {**cfgs[name], "max_prompts_per_batch": args.prompts,
                                   "max_batch_size": max(args.prompts * args.n, 1)}, model, tok, prompts,
                            args.n, params, args.device, args.repeat, args.profile))
            r = rows[-1]
            print(f"  {name}: {r['tokens']} tokens in {r['seconds']:.2f}s", flush=True)
        except Exception as e:  # one broken variant must not lose the others' numbers
            print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)

    base = next((r["tps"] for r in rows if r["name"] == "hf"), None)
    mem = "peak GPU MiB (vllm: device used, KV reservation incl.)" if cuda else "peak RSS MiB"
    print(f"\n| variant | generated tokens | seconds | tokens/s | x hf | {mem} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tps'] / base:.2f}" if base else "-"
        print(f"| {r['name']} | {r['tokens']} | {r['seconds']:.2f} | {r['tps']:.0f} | {ratio} | {r['mem']:.0f} |")


if __name__ == "__main__":
    main()
