"""Mixtures: exact target counts, weights, replacement, determinism by seed, achieved counts.

Run: python -m pytest -q tests/data/test_mixture.py
"""

import pytest

from alignment.data.mixture import MixtureSpec, build_mixture, source_targets
from alignment.data.sources import LoadedSource, SourceSpec


def _src(name, n, **kw):
    spec = SourceSpec(name=name, path=f"{name}.jsonl", **kw)
    recs = [{"messages": [{"role": "user", "content": f"{name} {i}"}, {"role": "assistant", "content": "a"}], "source": name, "id": f"{name}:{i}"} for i in range(n)]
    return LoadedSource(spec, recs, n_read=n)


def test_targets_sum_exactly_with_largest_remainder():
    specs = [SourceSpec(name=n, path="x", weight=1.0) for n in "abc"]
    assert source_targets(specs, 100) == [34, 33, 33]
    assert sum(source_targets(specs, 1_300_000)) == 1_300_000
    specs[0].count = 10
    assert source_targets(specs, 100) == [10, 45, 45]


def test_target_errors():
    specs = [SourceSpec(name="a", path="x", count=50), SourceSpec(name="b", path="x", count=60)]
    with pytest.raises(ValueError, match="more than target_count"):
        source_targets(specs, 100)
    with pytest.raises(ValueError, match="positive sum"):
        source_targets([SourceSpec(name="a", path="x", weight=0.0)], 10)


def test_paper_scale_counts_without_materialising():
    # The paper recipe's sizes: targets are exact whatever the weights.
    specs = [SourceSpec(name=n, path="x", weight=w) for n, w in [("a", 0.37), ("b", 0.21), ("c", 0.42)]]
    for total in (1_300_000, 300_000):
        t = source_targets(specs, total)
        assert sum(t) == total and t[2] > t[0] > t[1]


def test_counts_without_replacement_report_shortfall():
    loaded = [_src("a", 100, weight=3), _src("b", 10, weight=1)]
    spec = MixtureSpec(name="m", sources=[s.spec for s in loaded], target_count=80)
    recs, rep = build_mixture(spec, loaded, seed=0)
    by = {s["name"]: s for s in rep["sources"]}
    assert by["a"]["target"] == 60 and by["a"]["achieved"] == 60
    assert by["b"]["target"] == 20 and by["b"]["achieved"] == 10  # only 10 exist
    assert rep["achieved_count"] == len(recs) == 70
    assert len({r["id"] for r in recs}) == 70  # no repeats


def test_counts_with_replacement_repeat_whole_source_then_sample():
    loaded = [_src("a", 100, weight=3), _src("b", 7, weight=1)]
    spec = MixtureSpec(name="m", sources=[s.spec for s in loaded], target_count=80, replacement=True)
    recs, rep = build_mixture(spec, loaded, seed=0)
    by = {s["name"]: s for s in rep["sources"]}
    assert by["b"]["achieved"] == 20 and by["b"]["repeats"] == 2
    b_ids = [r["id"] for r in recs if r["source"] == "b"]
    # each of the 7 rows appears 2 or 3 times (2 whole copies + 6 of 7 sampled once more)
    assert sorted({b_ids.count(i) for i in set(b_ids)}) == [2, 3]
    assert len(recs) == 80


def test_deterministic_by_seed():
    loaded = [_src("a", 50, weight=1), _src("b", 50, weight=2)]
    spec = MixtureSpec(name="m", sources=[s.spec for s in loaded], target_count=40)
    r1, _ = build_mixture(spec, loaded, seed=7)
    r2, _ = build_mixture(spec, loaded, seed=7)
    r3, _ = build_mixture(spec, loaded, seed=8)
    assert [r["id"] for r in r1] == [r["id"] for r in r2]
    assert [r["id"] for r in r1] != [r["id"] for r in r3]


def test_no_target_takes_everything_once():
    loaded = [_src("a", 5), _src("b", 3)]
    recs, rep = build_mixture(MixtureSpec(name="m", sources=[s.spec for s in loaded]), loaded, seed=0)
    assert len(recs) == 8 and rep["target_count"] == 8
