"""Synthesis throughput: problems per minute of MCTS (or DFS), with named baselines, in one run.

1. search overhead: the model-free scripted policy (synth/search/scripted_sampler.py), so the number
   is tree bookkeeping + verifiers only;
2. the tiny MoE (recipes/model/tiny.yaml, random init, our tiny tokenizer) as the policy
   through ``alignment.sampling.build_sampler`` (``--backend native`` by default), one
   problem at a time and in lockstep groups of ``--batch`` (merged sampler calls, what the
   stage does), against best-of-N sampling with the same sampler and about the same tokens
   per problem (the baseline a search has to justify itself against).

    python bench/synth.py                                  # CPU, 8 problems
    python bench/synth.py --device cuda --problems 32      # on a GPU
    python bench/synth.py --algorithm dfs --backend hf
    python bench/synth.py --save-checkpoint .bench_ckpt/tiny     # build the tiny policy once and exit
    python bench/synth.py --checkpoint .bench_ckpt/tiny          # reuse it (e.g. carried to a GPU box)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# the repo root first: this file's own name would otherwise shadow the `synth` package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_tiny_checkpoint(path: Path) -> None:
    import torch

    from tests.fixtures_model import build_tiny_model
    from tests.fixtures_tokenizer import build_tiny_tokenizer

    torch.manual_seed(0)
    build_tiny_model().save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)


def run_search(problems, sampler, render, cfg, label: str, batch: int = 1) -> dict:
    """Search every problem; ``batch > 1`` runs groups of problems in lockstep (merged sampler calls)."""
    from alignment.tasks.verify import get_verifier
    from synth.search import search
    from synth.search.lockstep import search_many
    from synth.search.tree import derive_seed

    verifiers = {"math": get_verifier("math"), "code": get_verifier("code")}

    def one(p, s):
        return search(p, s, verifiers[p.kind], cfg, seed=derive_seed(0, p.id), render=render)

    t0 = time.perf_counter()
    results = []
    for g in range(0, len(problems), batch):
        results += search_many(problems[g : g + batch], sampler, one)
    dt = time.perf_counter() - t0
    tokens = sum(r.stats["tokens"] for r in results)
    solved = sum(bool(r.stats["solved"]) for r in results)
    out = {"label": label, "problems_per_min": 60 * len(problems) / dt, "tokens_per_s": tokens / dt, "solved": solved, "n": len(problems), "tokens": tokens}
    print(f"{label}: {out['problems_per_min']:.1f} problems/min, {out['tokens_per_s']:.0f} tokens/s, "
          f"solved {solved}/{len(problems)}, {tokens} tokens")
    return out


def best_of_n(problems, sampler, render, n: int, max_new_tokens: int, label: str) -> dict:
    from alignment.sampling.base import SamplingParams
    from alignment.tasks.verify import get_verifier

    v = get_verifier("math")
    t0 = time.perf_counter()
    outs = sampler.generate([render(p) for p in problems], n, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7, seed=0))
    tokens = sum(len(s.token_ids) for row in outs for s in row)
    solved = sum(any(v.verify(p, s.text).passed for s in row) for p, row in zip(problems, outs))
    dt = time.perf_counter() - t0
    print(f"{label}: {60 * len(problems) / dt:.1f} problems/min, {tokens / dt:.0f} tokens/s, solved {solved}/{len(problems)}, {tokens} tokens")
    return {"problems_per_min": 60 * len(problems) / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--algorithm", choices=["mcts", "dfs"], default="mcts")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="problems searched in lockstep (synth.runner batch_problems)")
    ap.add_argument("--simulations", type=int, default=4)
    ap.add_argument("--step-tokens", type=int, default=32)
    ap.add_argument("--rollout-tokens", type=int, default=64)
    ap.add_argument("--checkpoint", default=None, help="a saved policy folder; default: build the tiny MoE in a temp dir")
    ap.add_argument("--save-checkpoint", default=None, help="build the tiny MoE policy into this folder and exit")
    args = ap.parse_args()
    if args.save_checkpoint:
        build_tiny_checkpoint(Path(args.save_checkpoint))
        return

    from alignment.tasks.format import chat_render, plain_render
    from alignment.tasks.problems import load_problems
    from synth.search.scripted_sampler import ScriptedSampler
    from synth.search.tree import SearchConfig

    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, device {args.device}")
    problems = load_problems("templates", "train", args.problems, seed=0)
    cfg = SearchConfig(algorithm=args.algorithm, num_children=args.children, num_simulations=args.simulations,
                       step_tokens=args.step_tokens, rollout_tokens=args.rollout_tokens)
    run_search(load_problems("templates", "train", 200, seed=0), ScriptedSampler(load_problems("templates", "train", 200, seed=0)),
               plain_render, cfg, f"{args.algorithm} scripted policy (search + verifier overhead, 200 problems)")

    from transformers import AutoTokenizer

    from alignment.sampling import build_sampler

    with tempfile.TemporaryDirectory() as d:
        if args.checkpoint:
            d = args.checkpoint
        else:
            build_tiny_checkpoint(Path(d))
        tok = AutoTokenizer.from_pretrained(d)
        sampler = build_sampler({"backend": args.backend}, d, tokenizer=tok, device=args.device)
        render = chat_render(tok) if tok.chat_template else plain_render
        best_of_n(problems[:1], sampler, render, 2, 8, "warm-up (not counted)")
        seq = run_search(problems, sampler, render, cfg, f"{args.algorithm} tiny MoE via {args.backend}, one problem at a time")
        res = run_search(problems, sampler, render, cfg, f"{args.algorithm} tiny MoE via {args.backend}, lockstep batch {args.batch}", args.batch)
        print(f"lockstep/sequential problems-per-minute ratio: {res['problems_per_min'] / seq['problems_per_min']:.2f}x")
        per_problem = max(1, res["tokens"] // max(1, res["n"]))
        n = max(1, per_problem // args.rollout_tokens)
        base = best_of_n(problems, sampler, render, n, args.rollout_tokens, f"baseline best-of-{n} sampling, same sampler (~same tokens)")
        print(f"search/best-of-n problems-per-minute ratio: {res['problems_per_min'] / base['problems_per_min']:.2f}x")


if __name__ == "__main__":
    main()
