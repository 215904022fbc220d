"""Mixtures: draw a target number of examples from weighted sources, deterministically.

The paper recipe asks for ~1,300,000 broad examples (stage 1) and ~300,000 hard ones
(stage 2); a :class:`MixtureSpec` in ``recipes/data/<name>.yaml`` says how many to take from
which source. Per source the target is its explicit ``count`` or its ``weight`` share of what
the explicit counts leave (largest-remainder rounding, so the targets sum exactly to
``target_count``). Then:

- without replacement, a source gives ``min(target, available)`` distinct examples (a
  shortfall is reported, never silently filled from another source);
- with replacement, a source smaller than its target is repeated whole ``target // n`` times
  plus a random ``target % n`` of its rows (lower variance than i.i.d. draws).

The same seed gives the same mixture, row for row. :func:`build_mixture` returns the records
and a report with each source's available/target/achieved counts, which the stage writes
into the data card.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from alignment.data.sources import LoadedSource, SourceSpec
from alignment.errors import ConfigError


@dataclass
class MixtureSpec:
    """A mixture of sources with a target size.

    Args:
        name (`str`): mixture name (file and card name, e.g. ``sft_broad``).
        sources (`list[SourceSpec]`): the sources.
        target_count (`int`, *optional*): examples in the mixture; ``None`` takes every record of
            every source once (weights ignored).
        replacement (`bool`, *optional*, defaults to `False`): allow repeating a source's records to
            reach its target.
        shuffle (`bool`, *optional*, defaults to `True`): shuffle the final mixture (seeded).
    """

    name: str = MISSING
    sources: list[SourceSpec] = field(default_factory=list)
    target_count: Optional[int] = None
    replacement: bool = False
    shuffle: bool = True


def source_targets(specs: list[SourceSpec], target_count: int) -> list[int]:
    """Per-source target counts summing to ``target_count`` (see the module docstring).

    Raises:
        ValueError: when explicit counts exceed ``target_count``, or weights are negative / all zero.
    """
    fixed = sum(s.count for s in specs if s.count is not None)
    if fixed > target_count:
        raise ConfigError(f"explicit source counts sum to {fixed}, more than target_count={target_count}")
    weighted = [i for i, s in enumerate(specs) if s.count is None]
    targets = [s.count if s.count is not None else 0 for s in specs]
    rest = target_count - fixed
    if not weighted:
        if rest:
            raise ConfigError(f"explicit counts sum to {fixed} but target_count is {target_count} and no source has a weight")
        return targets
    weights = [specs[i].weight for i in weighted]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"source weights must be >= 0 with a positive sum, got {dict(zip([specs[i].name for i in weighted], weights))}")
    exact = [rest * w / sum(weights) for w in weights]
    floors = [int(x) for x in exact]
    # Largest remainder: hand the leftover units to the largest fractional parts (ties: first source).
    order = sorted(range(len(exact)), key=lambda j: (-(exact[j] - floors[j]), j))
    for j in order[: rest - sum(floors)]:
        floors[j] += 1
    for j, i in enumerate(weighted):
        targets[i] = floors[j]
    return targets


def _draw(records: list[dict], target: int, replacement: bool, rng: random.Random) -> tuple[list[dict], int]:
    """``target`` records (or all, if fewer and no replacement); returns (picked, times repeated whole)."""
    n = len(records)
    if n == 0 or target == 0:
        return [], 0
    if target <= n:
        return [records[i] for i in sorted(rng.sample(range(n), target))], 0
    if not replacement:
        return list(records), 0
    repeats, rest = divmod(target, n)
    picked = [r for _ in range(repeats) for r in records]
    picked += [records[i] for i in sorted(rng.sample(range(n), rest))]
    return picked, repeats


def build_mixture(spec: MixtureSpec, loaded: list[LoadedSource], seed: int, dropped: Optional[dict[str, int]] = None) -> tuple[list[dict], dict[str, Any]]:
    """Draw the mixture.

    Args:
        spec (`MixtureSpec`): the mixture (its ``sources`` must match ``loaded`` one to one).
        loaded (`list[LoadedSource]`): the sources' records (after decontamination).
        seed (`int`): mixture seed; the same seed gives the same rows in the same order.
        dropped (`dict[str, int]`, *optional*): per source, records removed before mixing
            (decontamination), copied into the report.

    Returns:
        `tuple[list[dict], dict]`: the records and the report
        ``{name, seed, target_count, achieved_count, replacement, sources: [...]}``.
    """
    if len(loaded) != len(spec.sources):
        raise ValueError(f"mixture '{spec.name}': {len(spec.sources)} sources in the spec but {len(loaded)} loaded")
    names = [s.name for s in spec.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"mixture '{spec.name}': duplicate source names {names}")
    if spec.target_count is None:
        targets = [len(src.records) for src in loaded]
    else:
        targets = source_targets(list(spec.sources), spec.target_count)

    records: list[dict] = []
    per_source = []
    for src, target in zip(loaded, targets):
        rng = random.Random(f"{seed}:{spec.name}:{src.spec.name}")
        picked, repeats = _draw(src.records, target, spec.replacement, rng)
        records.extend(picked)
        per_source.append(
            {
                "name": src.spec.name,
                "path": src.spec.path,
                "license": src.license,
                "rows_read": src.n_read,
                "bad_rows": src.n_bad,
                "bad_by_kind": dict(src.bad_by_kind),
                "decontaminated": (dropped or {}).get(src.spec.name, 0),
                "available": len(src.records),
                "target": target,
                "achieved": len(picked),
                "repeats": repeats,
            }
        )
    if spec.shuffle:
        random.Random(f"{seed}:{spec.name}:shuffle").shuffle(records)
    report = {
        "name": spec.name,
        "seed": seed,
        "target_count": spec.target_count if spec.target_count is not None else sum(targets),
        "achieved_count": len(records),
        "replacement": spec.replacement,
        "sources": per_source,
    }
    return records, report
