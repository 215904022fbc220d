"""From search results to datasets: SFT records, preference pairs, process labels, data cards.

Per problem (a result dict written by ``synth.runner``):
- SFT: up to ``max_sft`` distinct verified responses, best first (score desc, then
  shorter, then text) as ``{"messages": [user, assistant], ...}`` rows (TRL conversational);
- pairs: the best vs the worst verified response when the best passed and the score gap is
  at least ``min_gap``, as ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``
  (TRL preference format);
- process labels: one row per root-to-leaf path of the searched tree with, per step, the
  visit count, the mean verified reward below it (soft label, an MC estimate of success)
  and a hard label (1 if any verified response below the step passed; Math-Shepherd style).

Rows are plain dicts in a fixed key order, so the same results give byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignment.data.cards import card_template, write_card
from alignment.paths import DATA_CARDS_DIR

GENERATOR_VERSION = "synth-1"
CARD_TEMPLATE = DATA_CARDS_DIR / "synth_generated.md"


def _rank(c: dict) -> tuple:
    return (-c["score"], len(c["text"]), c["text"])


def sft_rows(result: dict, max_sft: int) -> list[dict]:
    seen, rows = set(), []
    for c in sorted((c for c in result["candidates"] if c["passed"]), key=_rank):
        if c["text"] in seen:
            continue
        seen.add(c["text"])
        rows.append({
            "messages": [{"role": "user", "content": result["user"]}, {"role": "assistant", "content": c["text"]}],
            "problem_id": result["problem_id"], "source": result["source"], "kind": result["kind"],
            "score": c["score"],
        })
        if len(rows) >= max_sft:
            break
    return rows


def pair_row(result: dict, min_gap: float) -> dict | None:
    judged = [c for c in result["candidates"] if c["error_kind"] is None]
    if not judged:
        return None
    best = min(judged, key=_rank)
    worst = max(judged, key=lambda c: (-c["score"], len(c["text"]), c["text"]))
    if not best["passed"] or best["score"] - worst["score"] < min_gap or best["text"] == worst["text"]:
        return None
    return {
        "prompt": [{"role": "user", "content": result["user"]}],
        "chosen": [{"role": "assistant", "content": best["text"]}],
        "rejected": [{"role": "assistant", "content": worst["text"]}],
        "problem_id": result["problem_id"], "source": result["source"], "kind": result["kind"],
        "chosen_score": best["score"], "rejected_score": worst["score"],
    }


def process_rows(result: dict) -> list[dict]:
    rows = []

    def walk(node: dict, steps: list[dict]) -> None:
        live = [c for c in node["children"] if not c["pruned"] and c["visits"] > 0]
        if not live:
            if steps:
                rows.append({
                    "problem_id": result["problem_id"], "kind": result["kind"], "prompt": result["user"],
                    "steps": [s["step"] for s in steps],
                    "values": [s["value"] for s in steps],
                    "visits": [s["visits"] for s in steps],
                    "labels": [1 if s["max_reward"] > 0 else 0 for s in steps],
                })
            return
        for child in live:
            walk(child, steps + [child])

    walk(result["tree"], [])
    return rows


def build_datasets(results: list[dict], max_sft: int, min_gap: float) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"sft": [], "pairs": [], "process": []}
    for r in results:
        out["sft"].extend(sft_rows(r, max_sft))
        pair = pair_row(r, min_gap)
        if pair is not None:
            out["pairs"].append(pair)
        out["process"].extend(process_rows(r))
    return out


def summarize(results: list[dict]) -> dict[str, Any]:
    """Counts and pass rates over problems and verified responses (deterministic)."""
    n = len(results)
    cands = [c for r in results for c in r["candidates"]]
    judged = [c for c in cands if c["error_kind"] is None]
    by_source: dict[str, dict[str, int]] = {}
    for r in results:
        s = by_source.setdefault(r["source"], {"problems": 0, "solved": 0})
        s["problems"] += 1
        s["solved"] += int(any(c["passed"] for c in r["candidates"]))
    return {
        "problems": n,
        "solved": sum(s["solved"] for s in by_source.values()),
        "solve_rate": round(sum(s["solved"] for s in by_source.values()) / n, 6) if n else 0.0,
        "responses_verified": len(cands),
        "response_pass_rate": round(sum(c["passed"] for c in judged) / len(judged), 6) if judged else 0.0,
        "infra_faults": len(cands) - len(judged),
        "sampler_calls": sum(r["stats"]["sampler_calls"] for r in results),
        "tokens": sum(r["stats"]["tokens"] for r in results),
        "by_source": by_source,
    }


def write_dataset_card(path: Path, dataset: str, fields: list[str], count: int, data_file: Path, summary: dict,
                       config: dict, seed: int, stage: str, verifiers: dict[str, str]) -> Path:
    """The card of one output file (template: ``data_cards/synth_generated.md``)."""
    import yaml

    header, body = card_template(CARD_TEMPLATE)
    header.update(
        name=f"synth_{dataset}",
        description=f"{dataset} rows generated by MCTS/DFS search with verifiers (yialign-synth)",
        sources=[{"name": name, "count": s["problems"]} for name, s in sorted(summary["by_source"].items())] or [{"name": "none", "count": 0}],
        fields=fields,
        records=count,
        stage=stage,
    )
    values = dict(
        dataset=dataset, generator=GENERATOR_VERSION, verifiers=json.dumps(verifiers, sort_keys=True),
        count=count, summary=json.dumps(summary, indent=2, sort_keys=True),
        config=yaml.safe_dump(config, sort_keys=True, allow_unicode=True, width=100).rstrip(),
    )
    return write_card(path, header, body, files=[data_file], seed=seed, values=values)
