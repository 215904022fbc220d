"""The ``reward`` stage: a Bradley-Terry reward model in two phases, then an inspection report.

Run inside the pipeline (recipe recipes/stage/reward.yaml)::

    yialign stages=[reward]                           # after sft_hard and synth have run
    yialign stages=[reward] stage.reward.lora.enabled=true stage.reward.finetune.min_gap=0.8

Inputs: ``policy`` (its ``model``: the causal LM the reward model starts from, e.g. sft_hard) and
``synth`` (its ``pairs``: ``{prompt, chosen, rejected, chosen_score, rejected_score, ...}`` JSONL).
A phase source is either such an input name or a file / folder / hub id (reward/pairs.py).

Steps (config -> build -> loop -> save):

1. load the pairs of each phase; phase 2 curates them (highest vs lowest score per prompt, small gaps
   dropped); split every set by prompt into train / held-out with one seed, so a held-out prompt
   is held out in both phases;
2. start the sequence-classification model from the policy (new ``score`` head) and measure the
   held-out pairwise accuracy before training;
3. phase 1 (preference-model pre-training), phase 2 (fine-tuning); trainer checkpoints in
   ``checkpoints/<phase>/``, resumed after an interruption; a finished phase is not retrained;
4. held-out pairwise accuracy of the final model; inspection report on the held-out pairs;
   publish ``model`` (save_pretrained RM + tokenizer), ``report`` and ``pairs`` (the exact train and
   held-out pair sets, with a data card).

Metrics: ``pairwise_acc`` (held-out, final), ``pairwise_acc_init``, ``pretrain_*`` / ``finetune_*``
(train loss, steps, pairs, TRL eval accuracy), ``heldout_pairs``, ``length_spearman``, ``wall_s``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import MISSING

from alignment.artifacts import atomic_write_jsonl, atomic_write_text
from alignment.errors import ConfigError, DataError
from alignment.paths import DATA_CARDS_DIR
from alignment.stage_contract import StageContext, StageResult
from reward.onpolicy import SOURCE as ONPOLICY, OnPolicySpec, onpolicy_pairs
from reward.pairs import curate_pairs, load_pairs, prompt_key, split_by_prompt
from reward.train import LoraSpec, RewardPhase, TrainSpec, load_reward_model, train_phase

__all__ = ["RewardStageConfig", "run"]

log = logging.getLogger(__name__)
CARD_TEMPLATE = DATA_CARDS_DIR / "reward_pairs.md"


@dataclass
class RewardStageConfig:
    """Schema of ``stage.reward`` (recipes/stage/reward.yaml).

    Args:
        pretrain (`RewardPhase`): phase 1, preference-model pre-training on broad pairs (``curate=false``).
        finetune (`RewardPhase`): phase 2, fine-tuning on curated pairs (``curate=true``, ``min_gap``).
        train (`TrainSpec`): settings shared by both phases (max_length, bf16, checkpoints, ...).
        lora (`LoraSpec`): LoRA instead of full fine-tuning (merged into the saved model).
        onpolicy (`OnPolicySpec`, *optional*): the policy's own answers to training problems, judged by a
            verifier (reward/onpolicy.py); a phase uses them by naming ``onpolicy`` in its sources.
        phases (`list[str]`, *optional*, defaults to `["pretrain", "finetune"]`): which phases run, in order.
        eval_fraction (`float`, *optional*, defaults to `0.1`): share of prompts held out for pairwise accuracy.
        max_heldout_pairs (`int`, *optional*, defaults to `1000`): cap on held-out pairs scored (a seeded hash
            picks them); their prompts stay out of training either way.
        dtype (`str`, *optional*, defaults to `"float32"`): weights dtype while training (``bf16`` in ``train``
            is mixed precision on top of it).
        inspect_max_prompts (`int`, *optional*, defaults to `50`): prompts shown in the report's tables.
        pairs_key (`str`, *optional*, defaults to `"pairs"`): output key read from an input stage named as a source.
        seed (`int`, *optional*): split/training seed; defaults to the recipe's seed.
    """

    pretrain: RewardPhase = field(default_factory=lambda: RewardPhase(sources=MISSING))
    finetune: RewardPhase = field(default_factory=lambda: RewardPhase(sources=MISSING, curate=True))
    train: TrainSpec = field(default_factory=TrainSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    onpolicy: OnPolicySpec = field(default_factory=OnPolicySpec)
    phases: list[str] = field(default_factory=lambda: ["pretrain", "finetune"])
    eval_fraction: float = 0.1
    max_heldout_pairs: int = 1000
    dtype: str = "float32"
    inspect_max_prompts: int = 50
    pairs_key: str = "pairs"
    seed: int | None = None


def _phase_pairs(phase: RewardPhase, ctx: StageContext, pairs_key: str, onpolicy: list[dict] | None) -> list[dict]:
    rows: list[dict] = []
    for src in phase.sources:
        if src == ONPOLICY:
            if onpolicy is None:
                raise ConfigError(f"stage '{ctx.name}': a phase names source '{ONPOLICY}' but onpolicy.enabled is false")
            got = onpolicy[: phase.max_pairs] if phase.max_pairs is not None else list(onpolicy)
        elif src in ctx.inputs:
            # an earlier stage may legitimately produce no pairs (a weak policy verifies nothing)
            got = load_pairs(ctx.input(src, pairs_key), limit=phase.max_pairs, allow_empty=True)
            if not got:
                log.warning("stage '%s': input '%s' has no preference pairs", ctx.name, src)
        else:
            got = load_pairs(src, limit=phase.max_pairs)
        rows.extend(got)
    return curate_pairs(rows, phase.min_gap) if phase.curate else rows


def _write_pairs(ctx: StageContext, sets: dict[str, list[dict]], cfg: RewardStageConfig) -> str:
    """Publish the exact train / held-out pair sets with a data card (template: data_cards/reward_pairs.md)."""
    from alignment.data.cards import card_template, write_card

    tmp = ctx.tmp_dir("pairs")
    for name, rows in sets.items():
        atomic_write_jsonl(tmp / f"{name}.jsonl", rows)
    header, body = card_template(CARD_TEMPLATE)
    header.update(
        description=f"Preference pairs the reward model of stage '{ctx.name}' trained on, and its held-out pairs.",
        sources=[{"name": name, "count": len(rows)} for name, rows in sets.items()],
        stage=ctx.name, records=sum(len(r) for r in sets.values()))
    counts = "\n".join(f"| {name}.jsonl | {len(rows)} | {len({prompt_key(r['prompt']) for r in rows})} |"
                       for name, rows in sets.items())
    write_card(tmp / "card.md", header, body, files=[tmp / f"{name}.jsonl" for name in sets], seed=cfg.seed,
               values=dict(stage=ctx.name, counts=counts, sources={p: list(getattr(cfg, p).sources) for p in cfg.phases},
                           min_gap=cfg.finetune.min_gap, eval_fraction=cfg.eval_fraction, seed=cfg.seed))
    return ctx.publish(tmp, "pairs")


def run(cfg: RewardStageConfig, ctx: StageContext) -> StageResult:
    """Train the reward model (both phases), evaluate held-out pairwise accuracy, inspect, publish."""
    from reward.inspect import load_candidates, run_inspection
    from reward.score import RewardScorer

    t0 = time.time()
    cfg.seed = ctx.seed if cfg.seed is None else cfg.seed
    cfg.train.seed = cfg.seed
    device = ctx.device if ctx.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    for name in cfg.phases:
        if name not in ("pretrain", "finetune"):
            raise ConfigError(f"stage '{ctx.name}': unknown phase {name!r} in phases (expected pretrain, finetune)")

    # ---- data: per phase, split by prompt (one hash, so held-out prompts agree across phases)
    splits, held_out, sets = {}, {}, {}
    metrics: dict = {}
    onpolicy = None
    if cfg.onpolicy.enabled:
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        cfg.onpolicy.seed = cfg.seed
        onpolicy, m = onpolicy_pairs(cfg.onpolicy, ctx.input("policy", "model"), device, ctx.stage_dir / "onpolicy.jsonl")
        metrics.update(m)
    for name in cfg.phases:
        rows = _phase_pairs(getattr(cfg, name), ctx, cfg.pairs_key, onpolicy)
        train, evals = split_by_prompt(rows, cfg.eval_fraction, cfg.seed)
        if not train:
            log.warning("stage '%s': phase '%s' has no training pairs (sources %s, min_gap %s): skipped",
                        ctx.name, name, list(getattr(cfg, name).sources), getattr(cfg, name).min_gap)
            metrics[f"{name}_skipped"] = 1
            continue
        splits[name] = (train, evals)
        sets[f"{name}_train"] = train
        for r in evals:
            held_out.setdefault((prompt_key(r["prompt"]), r["chosen"], r["rejected"]), r)
    if not splits:
        raise DataError(f"stage '{ctx.name}': no phase has training pairs; check the sources of "
                         f"{', '.join(cfg.phases)} (an input stage with no pairs needs another source)")
    held = list(held_out.values())
    if len(held) > cfg.max_heldout_pairs:
        def key(r: dict) -> tuple:
            return prompt_key(r["prompt"]), r["chosen"], r["rejected"]

        def rank(r: dict) -> str:
            return hashlib.sha256(f"{cfg.seed}\0{key(r)}".encode()).hexdigest()

        held = sorted(held, key=rank)[:cfg.max_heldout_pairs]
        kept = {key(r) for r in held}
        splits = {name: (train, [r for r in evals if key(r) in kept]) for name, (train, evals) in splits.items()}
    sets["heldout"] = held
    # under a distributed launch every rank trains; only rank 0 writes, scores and reports
    main = ctx.is_main_process
    pairs_out = _write_pairs(ctx, sets, cfg) if main else "pairs"

    # ---- model: from the policy, with a fresh score head
    dtype = getattr(torch, cfg.dtype)
    model, tokenizer = load_reward_model(ctx.input("policy", "model"), dtype=dtype)
    metrics["heldout_pairs"] = len(held)
    if held and main:
        metrics["pairwise_acc_init"] = RewardScorer(model, tokenizer, device, max_length=cfg.train.max_length
                                                    ).pairwise_accuracy(held)[0]

    metrics["prep_s"] = round(time.time() - t0, 2)  # data, model load, initial held-out accuracy

    # ---- the two phases
    for name in splits:
        train, evals = splits[name]
        t_phase = time.time()
        model, m = train_phase(model, tokenizer, train, evals, getattr(cfg, name), cfg.train, cfg.lora,
                               ctx.checkpoint_dir / name, device=device)
        metrics.update({f"{name}_{k}": v for k, v in m.items()})
        metrics[f"{name}_wall_s"] = round(time.time() - t_phase, 2)

    # ---- held-out accuracy, inspection report, publish
    if not main:
        return StageResult(outputs={"model": "model", "report": "report", "pairs": pairs_out}, metrics=metrics)
    scorer = RewardScorer(model, tokenizer, device, max_length=cfg.train.max_length)
    report_tmp = ctx.tmp_dir("report")
    t_inspect = time.time()
    if held:
        # the report scores every held-out pair once; its pairwise accuracy is the stage's metric
        summary = run_inspection(scorer, load_candidates(Path(ctx.stage_dir / pairs_out / "heldout.jsonl")),
                                 report_tmp, title=f"{ctx.name}: held-out pairs", max_table_prompts=cfg.inspect_max_prompts)
        metrics["pairwise_acc"] = summary["pairwise_acc"]
        for source, by in summary["pairwise_acc_by_source"].items():  # e.g. the on-policy pairs: what online DPO asks of it
            metrics[f"pairwise_acc/{source}"], metrics[f"heldout_pairs/{source}"] = by["acc"], by["pairs"]
        metrics["heldout_mean_margin"] = summary["mean_margin"]
        metrics["length_spearman"] = summary["length_spearman"]
    else:
        atomic_write_text(report_tmp / "README.txt", "no held-out pairs (eval_fraction=0): nothing to inspect\n")
    report_out = ctx.publish(report_tmp, "report")
    metrics["inspect_s"] = round(time.time() - t_inspect, 2)
    model_tmp = ctx.tmp_dir("model")
    model.save_pretrained(model_tmp)
    tokenizer.save_pretrained(model_tmp)
    model_out = ctx.publish(model_tmp, "model")
    metrics["wall_s"] = round(time.time() - t0, 2)
    # NaN (e.g. a length correlation over equal lengths) is not valid JSON in the manifest
    metrics = {k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()}
    return StageResult(outputs={"model": model_out, "report": report_out, "pairs": pairs_out}, metrics=metrics)
