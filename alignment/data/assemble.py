"""Assemble an SFT stage's training set: load -> decontaminate -> (rank hard) -> mix -> (expand).

This is the data half of ``alignment.train.sft.run``; the model-dependent parts (scoring the
pool, sampling for pass rates) come in as callables so this module needs no model and tests
can drive it with fakes.

    from alignment.data.assemble import assemble
    result = assemble(mixture_spec, decontam_spec, seed=0)
    result.records, result.report     # chat records, and counts for the card

Order matters: decontamination runs on every source before the mixture is drawn, so target
counts are met with clean rows; hard ranking (stage 2) runs per source, so each source keeps
its own hardest rows (loss scales differ between, say, dialog and math).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alignment.safety.filter import SafetyFilter
from alignment.data.decontam import DecontamSpec, build_index, decontaminate
from alignment.data.hard import HardSelectionSpec, SeedExpander, select_hardest
from alignment.data.mixture import MixtureSpec, build_mixture, source_targets
from alignment.data.records import BadRowError, normalize_row
from alignment.data.sources import LoadedSource, SourceSpec, load_source
from alignment.errors import ConfigError

Scorer = Callable[[list[dict]], list[float]]
Rater = Callable[[list[dict]], list[Optional[float]]]


@dataclass
class AssembledMixture:
    """The stage's records plus the report that goes into its data card."""

    records: list[dict]
    report: dict[str, Any] = field(default_factory=dict)


def _decontaminate_all(loaded: list[LoadedSource], spec: DecontamSpec) -> tuple[dict[str, int], dict[str, Any]]:
    if not spec.enabled:
        return {}, {"enabled": False}
    index = build_index(spec)
    dropped, by_eval = {}, {}
    for src in loaded:
        kept, hits = decontaminate(src.records, index, desc=f"decontaminate {src.spec.name}")
        src.records = kept
        dropped[src.spec.name] = sum(hits.values())
        for label, n in hits.items():
            by_eval[label] = by_eval.get(label, 0) + n
    info = {
        "enabled": True,
        "ngram": spec.ngram,
        "min_tokens": spec.min_tokens,
        "eval_sets": dict(index.counts),
        "dropped_by_source": dropped,
        "dropped_by_eval_set": by_eval,
    }
    return dropped, info


def _rank_hard(loaded: list[LoadedSource], targets: list[int], spec: HardSelectionSpec, pool_names: set[str], seed: int, scorer: Scorer, rater: Optional[Rater]) -> list[dict]:
    info = []
    for src, target in zip(loaded, targets):
        if src.spec.name not in pool_names:
            continue
        candidates = src.records
        if spec.pool_per_source is not None and len(candidates) > spec.pool_per_source:
            rng = random.Random(f"{seed}:hard-pool:{src.spec.name}")
            candidates = [candidates[i] for i in sorted(rng.sample(range(len(candidates)), spec.pool_per_source))]
        if not candidates:
            continue
        losses = scorer(candidates)
        rates = rater(candidates) if rater is not None else None
        kept, scores = select_hardest(candidates, losses, min(target, len(candidates)), rates)
        kept_ids = {id(r) for r in kept}
        info.append(
            {
                "source": src.spec.name,
                "pool": len(candidates),
                "kept": len(kept),
                "mean_loss_pool": sum(losses) / len(losses),
                "mean_loss_kept": sum(l for r, l in zip(candidates, losses) if id(r) in kept_ids) / max(len(kept), 1),
                "mean_pass_rate_pool": None if rates is None or all(r is None for r in rates) else sum(r for r in rates if r is not None) / sum(r is not None for r in rates),
            }
        )
        src.records = kept
    return info


def assemble(
    mixture: MixtureSpec,
    decontam: DecontamSpec,
    seed: int,
    extra: Sequence[LoadedSource] = (),
    hard: Optional[HardSelectionSpec] = None,
    scorer: Optional[Scorer] = None,
    rater: Optional[Rater] = None,
    expander: Optional[SeedExpander] = None,
    safety: Optional["SafetyFilter"] = None,
) -> AssembledMixture:
    """Build the stage's records.

    Args:
        mixture (`MixtureSpec`): the recipe's sources and target count.
        decontam (`DecontamSpec`): eval sets to decontaminate against.
        seed (`int`): mixture / sampling seed.
        extra (`Sequence[LoadedSource]`, *optional*): already-loaded sources taken whole (the synth
            stage's verified SFT records); their rows count toward ``target_count``.
        hard (`HardSelectionSpec`, *optional*): stage-2 hard selection; needs ``scorer``.
        scorer (`Callable`, *optional*): records -> per-record loss under the stage-1 model.
        rater (`Callable`, *optional*): records -> per-record pass rate (None where no verifier).
        expander (`SeedExpander`, *optional*): seed-expansion hook (see :mod:`alignment.data.hard`).
        safety (`SafetyFilter`, *optional*): RAISE data filter applied to every source before
            decontamination: flagged rows dropped (counted by reason), PII scrubbed.
    """
    loaded = [load_source(s, seed) for s in mixture.sources]
    safety_info: dict[str, Any] = {"enabled": False}
    if safety is not None:
        safety_info = {"enabled": True, "by_source": {}}
        for src in loaded + list(extra):
            src.records, stats = safety.apply(src.records)
            safety_info["by_source"][src.spec.name] = stats.as_card()
    for src in extra:
        if any(s.spec.name == src.spec.name for s in loaded):
            raise ConfigError(f"extra source '{src.spec.name}' has the name of a recipe source")
    dropped, decontam_info = _decontaminate_all(loaded + list(extra), decontam)
    # Extra (synth) records are taken whole; if they alone exceed the target, a seeded sample of
    # them fills it (build_mixture draws without replacement) and the recipe sources get nothing.
    room = mixture.target_count if mixture.target_count is not None else None
    extra_specs = []
    for src in extra:
        count = len(src.records) if room is None else min(len(src.records), room)
        room = None if room is None else room - count
        extra_specs.append(replace(src.spec, count=count))
    spec = replace(mixture, sources=list(mixture.sources) + extra_specs)
    all_loaded = loaded + list(extra)
    targets = source_targets(spec.sources, spec.target_count) if spec.target_count is not None else [len(s.records) for s in all_loaded]

    hard_info: dict[str, Any] = {"enabled": False}
    if hard is not None and hard.enabled:
        if scorer is None:
            raise ValueError("hard selection is enabled but no scorer (stage-1 model) was given")
        names = set(hard.pool_sources) if hard.pool_sources is not None else {s.name for s in mixture.sources}
        unknown = names - {s.name for s in mixture.sources}
        if unknown:
            raise ConfigError(f"hard.pool_sources names {sorted(unknown)}, not sources of mixture '{mixture.name}'")
        per_source = _rank_hard(loaded, targets[: len(loaded)], hard, names, seed, scorer, rater)
        hard_info = {"enabled": True, "pass_rate": rater is not None, "per_source": per_source}

    records, report = build_mixture(spec, all_loaded, seed, dropped)

    if expander is not None and hard is not None and hard.expand_to:
        n_new = hard.expand_to - len(records)
        if n_new > 0:
            pool_names = set(hard.pool_sources) if hard.pool_sources is not None else {s.name for s in mixture.sources}
            seeds = [r for r in records if r["source"] in pool_names]
            new = []
            for i, row in enumerate(expander(seeds, n_new, seed)):
                try:
                    new.append(normalize_row(row, "messages", "expanded", f"seed_expander:row {i}", row_id=f"expanded:{i}"))
                except BadRowError as e:
                    raise ValueError(f"seed_expander returned a bad record: {e}") from None
            exp = LoadedSource(SourceSpec(name="expanded", path="seed_expander", license="derived from the seed records' sources"), new, n_read=len(new))
            exp_dropped, _ = _decontaminate_all([exp], decontam)
            records.extend(exp.records)
            report["sources"].append(
                {"name": "expanded", "path": "seed_expander", "license": exp.license, "rows_read": len(new), "bad_rows": 0, "bad_by_kind": {},
                 "decontaminated": exp_dropped.get("expanded", 0), "available": len(exp.records), "target": n_new, "achieved": len(exp.records), "repeats": 0}
            )
            report["achieved_count"] = len(records)
            report["target_count"] = max(report["target_count"], hard.expand_to)
    report["decontamination"] = decontam_info
    report["hard_selection"] = hard_info
    report["safety_filter"] = safety_info
    return AssembledMixture(records, report)
