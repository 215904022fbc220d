"""The data card of the online DPO stage's ``pairs.jsonl`` (template: data_cards/dpo_online_pairs.md),
written through the one card writer, :func:`alignment.data.cards.write_card`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from alignment.data.cards import card_template, write_card
from alignment.paths import DATA_CARDS_DIR
from alignment.stage_contract import StageContext
from alignment.tasks.problems import ProblemSpec
from alignment.train.online_dpo.config import OnlineDPOConfig

PAIRS_CARD_TEMPLATE = DATA_CARDS_DIR / "dpo_online_pairs.md"


def write_pairs_card(ctx: StageContext, cfg: OnlineDPOConfig, per_round: Sequence[dict], seed: int) -> Path:
    """The data card of ``pairs.jsonl`` (template: data_cards/dpo_online_pairs.md)."""
    header, body = card_template(PAIRS_CARD_TEMPLATE)
    header.update(
        name=f"{ctx.name}_pairs",
        description=f"Online DPO preference pairs written by stage {ctx.name}: best vs worst of "
                    f"{cfg.n_samples} samples per prompt, ranked by the reward model and verifiers.",
        sources=[{"name": f"round{m['round']}", "count": int(m["pairs"])} for m in per_round],
        records=sum(int(m["pairs"]) for m in per_round),
        stage=ctx.name,
    )
    keys = ("prompts", "samples", "pairs", "dropped_tie", "dropped_small_gap", "dropped_all_failed",
            "rm_score_mean", "verifier_pass_rate", "pair_margin_mean")
    prompts = (json.dumps([asdict(p) if isinstance(p, ProblemSpec) else dict(p) for p in cfg.prompts.problems])
               if cfg.prompts.problems else cfg.prompts.path or "input prompts")
    values = dict(
        stage=ctx.name, policy=per_round[0]["policy_in"], backend=cfg.sampler.backend, n_samples=cfg.n_samples,
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, prompts=prompts,
        frontier=json.dumps(asdict(cfg.frontier)), scorer=json.dumps(cfg.scorer), verifier=json.dumps(cfg.verifier),
        pair_rule=json.dumps(asdict(cfg.pairs)), count=header["records"],
        summary=json.dumps([{k: m.get(k) for k in ("round", *keys)} for m in per_round], indent=1),
    )
    return write_card(ctx.stage_dir / "pairs.card.md", header, body, files=[ctx.stage_dir / "pairs.jsonl"], seed=seed,
                      values=values)
