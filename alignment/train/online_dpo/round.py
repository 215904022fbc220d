"""The online DPO rounds: one round (sample, score, pair, train DPO, measure) and the loop over
rounds with its resume (``alignment.train.online_dpo``; the rollout it calls is ``rollout.py``).

One round, top to bottom (:func:`run_round`)::

    sampler(policy) -> n candidates per prompt          free the sampler
    scorer(rm)      -> reward per candidate             free the scorer
    verifier(kind)  -> passed / failed / unknown        (prompts with a known answer only)
    pair_rule.select_pairs per prompt -> pairs.jsonl
    policy = load(policy); ref log-probs cached (TRL precompute); DPO; save -> round<k>/model
    KL(ref || policy) on the candidates, DPO accuracy/margin on the pairs after the step
"""

from __future__ import annotations

import json
import random
import shutil
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from alignment.artifacts import atomic_replace_dir, atomic_write_json, atomic_write_jsonl, drop_timings, read_jsonl
from alignment.errors import ConfigError, DataError
from alignment.safety import GuardedSampler, SafetyFilter
from alignment.sampling import Prompt, Sampler, SamplingParams, close_sampler
from alignment.sampling.tokens import encode_prompts
from alignment.stage_contract import StageContext, StageResult
from alignment.train.dpo import load_policy, train_dpo
from alignment.train.losses import dpo_implicit_rewards, dpo_loss, sequence_logprobs
from alignment.train.online_dpo.card import write_pairs_card
from alignment.train.online_dpo.config import OnlineDPOConfig
from alignment.train.online_dpo.rollout import (PromptItem, candidate_metrics, free_accelerator_memory,
                                                generate_candidates, score_candidates, select_frontier)
from alignment.train.online_dpo.shard import Shard, current, prompt_seed
from alignment.train.pair_rule import Candidate, Drop, PairRule, PairStats, select_pairs

HEADLINE = ("pairs", "rm_score_mean", "rm_score_max", "verifier_pass_rate", "dpo_post_reward_accuracy",
            "dpo_post_reward_margin", "kl_ref_k3", "round_s")


def _round_seed(seed: int, stage: str, round_idx: int) -> int:
    """Distinct per stage and round: dpo_r2 must not redraw dpo_r1's samples if the policy did not move."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode()) + round_idx) % 2**31


def run_round(
    cfg: OnlineDPOConfig,
    ctx: StageContext,
    round_idx: int,
    policy_dir: Path,
    items: Sequence[PromptItem],
    make_sampler: Callable[[Path], Sampler],
    make_scorer: Callable[[], Any],
    verify: Callable[[PromptItem, str], bool | None] | None,
    seed: int,
    shard: Shard | None = None,
    prompt_seeds: bool = False,
) -> tuple[dict, list[dict], Path]:
    """One round: returns (metrics, pair rows, the new policy folder).

    On N ranks (``shard``; online_dpo/shard.py) each rank samples, scores and verifies its strided
    share of the prompts, every rank receives all rows in pool order and builds the same pairs,
    the DPO step trains under the launch (DDP), and rank 0 alone writes files and the model.
    """
    shard = current() if shard is None else shard
    rdir = ctx.stage_dir / f"round{round_idx}"
    rdir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"round": round_idx, "policy_in": str(policy_dir)}

    # ---- sample + score (reused when a crashed round is resumed)
    cand_file = rdir / "candidates.jsonl"
    if shard.broadcast(cand_file.is_file()):  # rank 0's view: every rank takes the same branch
        rows = read_jsonl(cand_file, max_bytes=0)  # our own file: its rows hold every sample of a prompt
    else:
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                stop=list(cfg.stop), seed=_round_seed(seed, ctx.name, round_idx))
        t0 = time.perf_counter()
        sampler = make_sampler(policy_dir)
        if cfg.frontier.enabled:
            probe = SamplingParams(max_new_tokens=cfg.frontier.max_new_tokens or cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_p=cfg.top_p, stop=list(cfg.stop), seed=params.seed + 1)
            pool = items
            items, frontier = select_frontier(sampler, pool, cfg.frontier, probe, verify, shard, prompt_seeds)
            metrics.update(frontier)
            metrics["probe_s"] = time.perf_counter() - t0
            if not items:
                raise DataError(f"round {round_idx}: no prompt of the pool is on the policy's frontier "
                                f"(pass rate in [{cfg.frontier.min_pass}, {cfg.frontier.max_pass}]): {frontier}")
        mine = shard.indices(len(items))
        seeds = [prompt_seed(params.seed, i) for i in mine] if prompt_seeds else None
        groups = generate_candidates(sampler, [items[i] for i in mine], cfg.n_samples, params, seeds)
        if shard.world > 1:  # who sampled what, with which seeds (tests/multigpu/test_online_dpo_ranks.py)
            probed = [] if not cfg.frontier.enabled or verify is None else [
                i for i in shard.indices(len(pool)) if pool[i].problem is not None]
            record = {"rank": shard.rank, "sampled": [items[i].id for i in mine], "seeds": seeds,
                      "probed": [pool[i].id for i in probed], "probe_seeds": [prompt_seed(probe.seed, i) for i in probed]}
            records = [r for part in shard.gather([record]) for r in part]
            if shard.is_main:
                atomic_write_json(rdir / "shards.json", {"world": shard.world, "ranks": records})
        if isinstance(sampler, GuardedSampler):  # safety.enabled: keep the guard events (every rank's)
            sampler.events = [e for part in shard.gather(sampler.events) for e in part]
            metrics["guard_events"] = len(sampler.events)
            metrics.update(sampler.summary())
            if shard.is_main:
                sampler.write_log(rdir / "guard_events.jsonl")
        # Drop the sampler (and the policy copy it holds) before the reward model loads; close() frees
        # a vLLM engine now (garbage collection may come after the next model is on the card).
        close_sampler(sampler)
        del sampler
        free_accelerator_memory()
        metrics["sample_s"] = time.perf_counter() - t0
        rows, timings = score_candidates([items[i] for i in mine], groups, make_scorer, verify)
        if cfg.safety.enabled:
            flt = SafetyFilter(cfg.safety)
            for r in rows:
                for smp in r["samples"]:
                    smp["unsafe"] = bool(flt.check(smp["text"])) or smp["finish_reason"] == "guard"
        rows = shard.gather_indexed(list(zip(mine, rows)), len(items))  # every rank, pool order
        if cfg.safety.enabled:
            metrics["unsafe_samples"] = sum(smp["unsafe"] for r in rows for smp in r["samples"])
        metrics.update(timings)  # rank 0's wall times
        if shard.is_main:
            atomic_write_jsonl(cand_file, rows)
    metrics.update(candidate_metrics(rows))

    # ---- pairs
    pairs, stats = build_pairs(rows, cfg.pairs, _round_seed(seed, ctx.name, round_idx), round_idx)
    metrics.update(stats.as_metrics())
    if "frontier_pool" in metrics:  # the share of the whole pool, probe included, that gave a pair
        metrics["pairs_per_pool_prompt"] = metrics["pairs"] / max(metrics["frontier_pool"], 1)
    if shard.is_main:  # every rank built the same pairs from the same rows and seed
        atomic_write_jsonl(rdir / "pairs.jsonl", pairs)

    # ---- DPO (the policy is loaded only now: the sampler and the scorer are gone)
    out_dir = rdir / "model"
    if not pairs:
        # Nothing to learn from (all ties / all failed): the policy carries over unchanged.
        if shard.is_main:
            tmp = rdir / ".tmp-model"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(policy_dir, tmp)
            atomic_replace_dir(tmp, out_dir)
        shard.barrier()  # the next round's sampler, on every rank, reads out_dir
        metrics["dpo_skipped"] = 1
        return metrics, pairs, out_dir
    model, tokenizer = load_policy(policy_dir, ctx.device, cfg.train.model_dtype)
    # Sequences scored before and after training (exact sampled tokens): candidates for the KL
    # estimate, then each pair's chosen and rejected for the post-round DPO metrics.
    by_id = {r["id"]: r for r in rows}
    kl_seqs = [(r["prompt"], s["token_ids"]) for r in rows for s in r["samples"]][: cfg.kl_samples]
    eval_pairs = pairs[: cfg.kl_samples]
    seqs = kl_seqs + [(p["prompt"], by_id[p["id"]]["samples"][p[side]]["token_ids"])
                      for side in ("chosen_index", "rejected_index") for p in eval_pairs]
    score_seqs = lambda: completion_logprobs(model, tokenizer, [p for p, _ in seqs], [c for _, c in seqs],  # noqa: E731
                                             cfg.logprob_batch_size) if seqs else torch.zeros(0)
    ref_logps = score_seqs()

    from alignment.checkpoints import last_good_checkpoint

    ckpt_dir = ctx.checkpoint_dir / f"round{round_idx}"
    resume = last_good_checkpoint(ckpt_dir)
    metrics.update(train_dpo(model, tokenizer, pairs, cfg.train, ckpt_dir, device=ctx.device,
                             seed=_round_seed(seed, ctx.name, round_idx), resume_from=resume))
    policy_logps = score_seqs()
    n_kl, n_pairs = len(kl_seqs), len(eval_pairs)
    if n_kl:
        metrics.update(kl_metrics(ref_logps[:n_kl], policy_logps[:n_kl]))
    metrics.update(post_round_dpo_metrics(ref_logps[n_kl:], policy_logps[n_kl:], n_pairs, cfg.train.beta))
    # Under DDP every rank holds the same trained weights; rank 0 publishes them.
    if shard.is_main:
        tmp = rdir / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_replace_dir(tmp, out_dir)
        if shard.world > 1:
            print(f"[{ctx.name}] round {round_idx}: rank 0 of {shard.world} published {out_dir}", flush=True)
    shard.barrier()  # the next round's sampler, on every rank, reads out_dir
    del model
    free_accelerator_memory()
    return metrics, pairs, out_dir


def run_rounds(
    cfg: OnlineDPOConfig,
    ctx: StageContext,
    policy_dir: str | Path,
    items: Sequence[PromptItem],
    make_sampler: Callable[[Path], Sampler],
    make_scorer: Callable[[], Any],
    verify: Callable[[PromptItem, str], bool | None] | None,
) -> StageResult:
    """The online loop over ``cfg.rounds`` rounds with the given factories (what :func:`run` wires up)."""
    if cfg.rounds < 1 or cfg.n_samples < 2:
        raise ConfigError(f"online DPO needs rounds >= 1 and n_samples >= 2, got {cfg.rounds} and {cfg.n_samples}")
    seed = ctx.seed if cfg.seed is None else cfg.seed
    shard = current()
    prompt_seeds = shard.world > 1 if cfg.prompt_seeds is None else cfg.prompt_seeds
    if shard.world > 1 and not prompt_seeds:
        raise ConfigError(f"prompt_seeds: false cannot run on {shard.world} ranks: each rank would draw its share "
                          "from one stream, so the samples would depend on the rank count; leave it null")
    policy_dir = Path(policy_dir)
    all_pairs, per_round = [], []
    for k in range(1, cfg.rounds + 1):
        rdir = ctx.stage_dir / f"round{k}"
        done = rdir / "metrics.json"
        if shard.broadcast(done.is_file() and (rdir / "model" / "config.json").is_file()):
            per_round.append(json.loads(done.read_text(encoding="utf-8")))
            all_pairs.extend(read_jsonl(rdir / "pairs.jsonl", max_bytes=0))
            policy_dir = rdir / "model"
            continue
        started = time.perf_counter()
        metrics, pairs, policy_dir = run_round(cfg, ctx, k, policy_dir, items, make_sampler, make_scorer, verify, seed,
                                               shard, prompt_seeds)
        metrics["round_s"] = round(time.perf_counter() - started, 3)
        if shard.is_main:
            atomic_write_json(done, metrics)  # the round's commit point
            # Its trainer checkpoints (and reference cache) only served a resume of this round.
            shutil.rmtree(ctx.checkpoint_dir / f"round{k}", ignore_errors=True)
        shard.barrier()
        per_round.append(metrics)
        all_pairs.extend(pairs)
        if shard.is_main:
            print(f"[{ctx.name}] round {k}: {metrics['pairs']} pairs from {metrics['prompts']} prompts, "
              f"rm mean {metrics['rm_score_mean']:.3f}, dpo acc {metrics.get('dpo_post_reward_accuracy', float('nan')):.2f}, "
              f"{metrics['round_s']:.1f}s")

    if shard.is_main:
        atomic_write_jsonl(ctx.stage_dir / "pairs.jsonl", all_pairs)
        write_pairs_card(ctx, cfg, per_round, seed)
    # Headline numbers first: the pipeline's stage table shows the first few.
    last = per_round[-1]
    flat = {k: last[k] for k in HEADLINE if k in last}
    flat.update({k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "round" and k not in flat})
    if cfg.rounds > 1:
        for m in per_round:
            flat.update({f"r{m['round']}/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and k != "round"})
    flat["rounds"] = cfg.rounds
    # no wall times in the published file: its hash is part of the next stage's input hash
    if shard.is_main:
        atomic_write_json(ctx.stage_dir / "metrics.json", {"config": asdict(cfg), "rounds": drop_timings(per_round)})
    outputs = {"model": str(policy_dir.relative_to(ctx.stage_dir)), "pairs": "pairs.jsonl",
               "pairs_card": "pairs.card.md", "metrics": "metrics.json"}
    return StageResult(outputs=outputs, metrics=flat)


# --------------------------------------------------------------------------- pairs


def build_pairs(rows: Sequence[dict], rule: PairRule, seed: int, round_idx: int) -> tuple[list[dict], PairStats]:
    """Apply the pair rule to every prompt's candidates; return pair rows (JSONL-ready) and counts."""
    rng = random.Random(seed)
    stats, out = PairStats(), []
    for r in rows:
        cands = [Candidate(s["text"], s["reward"], s["passed"], s.get("unsafe", False)) for s in r["samples"]]
        result = select_pairs(cands, rule, rng)
        stats.add(result)
        if isinstance(result, Drop):
            continue
        for pair in result:
            c, j = r["samples"][pair.chosen], r["samples"][pair.rejected]
            out.append({
                "prompt": r["prompt"], "chosen": c["text"], "rejected": j["text"],
                "id": r["id"], "round": round_idx, "why": pair.why, "margin": pair.margin,
                "chosen_reward": c["reward"], "rejected_reward": j["reward"],
                "chosen_passed": c["passed"], "rejected_passed": j["passed"],
                "chosen_index": pair.chosen, "rejected_index": pair.rejected,
            })
    return out, stats


# --------------------------------------------------------------------------- KL and post-round metrics


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: Sequence[Prompt], completions: Sequence[Sequence[int]],
                        batch_size: int) -> torch.Tensor:
    """Sum of log pi(completion | prompt) for each pair, with the prompt rendered as the sampler does."""
    device = next(model.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [p + list(c) for p, c in zip(prompt_ids[start:start + batch_size], completions[start:start + batch_size])]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (p, s) in enumerate(zip(prompt_ids[start:], seqs)):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
            labels[row, len(p):len(s)] = ids[row, len(p):len(s)]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        out.append(sequence_logprobs(logits[:, :-1], labels[:, 1:].to(device)).cpu())
    model.train(was_training)
    return torch.cat(out)


def kl_metrics(ref_logps: torch.Tensor, policy_logps: torch.Tensor) -> dict[str, float]:
    """KL(ref || policy) estimated on samples drawn from the reference (this round's candidates).

    ``k1`` = mean(log ref - log pi) is unbiased; ``k3`` = mean(r - 1 - log r), r = pi/ref, is
    unbiased too, never negative and has lower variance (Schulman, "Approximating KL divergence").
    """
    log_r = (policy_logps - ref_logps).double()
    return {
        "kl_ref_k1": float((-log_r).mean()),
        "kl_ref_k3": float((log_r.clamp(max=50).exp() - 1 - log_r).mean()),
    }


def post_round_dpo_metrics(ref_logps: torch.Tensor, policy_logps: torch.Tensor, n_pairs: int, beta: float) -> dict:
    """DPO implicit-reward accuracy, margin and loss of the trained policy on the round's pairs.

    TRL's logged values are taken before each step's update (step 1 always shows 0), so with the
    few steps of a round they say little; these are measured after the round. Inputs hold the
    chosen log-probs of ``n_pairs`` pairs, then their rejected log-probs.
    """
    if n_pairs == 0:
        return {}
    pc, pr = policy_logps[:n_pairs], policy_logps[n_pairs:]
    rc, rr = ref_logps[:n_pairs], ref_logps[n_pairs:]
    chosen, rejected = dpo_implicit_rewards(pc, rc, beta), dpo_implicit_rewards(pr, rr, beta)
    return {
        "dpo_post_reward_accuracy": float((chosen > rejected).float().mean()),
        "dpo_post_reward_margin": float((chosen - rejected).mean()),
        "dpo_post_loss": float(dpo_loss(pc, pr, rc, rr, beta)),
    }
