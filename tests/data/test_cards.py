"""Data cards: mixture cards written by stages and the hand-written cards in data_cards/ validate.

Run: python -m pytest -q tests/data/test_cards.py
"""

from pathlib import Path

import pytest
import yaml

from alignment.artifacts import file_hash, git_commit
from alignment.data.cards import CardError, card_template, parse_card, validate_card, write_card, write_mixture_card

REPO = Path(__file__).resolve().parents[2]
REPORT = {
    "name": "mix", "seed": 3, "target_count": 10, "achieved_count": 9, "replacement": False,
    "sources": [
        {"name": "a", "path": "a.jsonl", "license": "MIT", "rows_read": 8, "bad_rows": 1, "bad_by_kind": {"bad_json": 1},
         "decontaminated": 1, "available": 6, "target": 5, "achieved": 5, "repeats": 0},
        {"name": "b", "path": "builtin:x", "license": "BSD", "rows_read": 4, "bad_rows": 0, "bad_by_kind": {},
         "decontaminated": 0, "available": 4, "target": 5, "achieved": 4, "repeats": 0},
    ],
}


def test_mixture_card_roundtrip(tmp_path):
    path = write_mixture_card(tmp_path / "card.md", REPORT, "A test mixture.", {"d.jsonl": "ab" * 32}, ["messages", "source"], "sft_broad", {"ngram": 30})
    header, body = parse_card(path.read_text(), str(path))
    assert header["achieved_count"] == 9 and header["seed"] == 3
    assert [s["count"] for s in header["sources"]] == [5, 4]
    assert header["bad_rows"] == {"a": 1, "b": 0}
    assert "Short of target" in body and "| a | 6 | 5 | 5 |" in body



@pytest.mark.parametrize("template", ["synth_generated.md", "reward_pairs.md", "dpo_online_pairs.md"])
def test_write_card_fills_commit_hashes_and_seed_the_same_way(tmp_path, template):
    """The one card writer: every generated card gets the code's commit, its files' hashes and the seed."""
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n')
    header, body = card_template(REPO / "data_cards" / template)
    values = {name: f"<{name}>" for name in _placeholders(body) if name != "commit"}
    path = write_card(tmp_path / "rows.card.md", header, body, files=[data], seed=7, values=values)
    got, text = parse_card(path.read_text(), str(path))
    assert got["commit"] == git_commit() and got["hashes"] == {"rows.jsonl": file_hash(data)} and got["seed"] == 7
    assert all(v in text for v in values.values()) and f"`{git_commit()}`" in text  # every template names the commit


def _placeholders(body: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(body) if name}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h: h.pop("seed"), "missing required key 'seed'"),
        (lambda h: h.update(seed="7"), "key 'seed' must be int"),
        (lambda h: h.update(seed=True), "key 'seed' must be int"),
        (lambda h: h.update(colour="red"), "unknown key"),
        (lambda h: h.update(kind="thing"), "key 'kind'"),
        (lambda h: h["sources"][0].pop("count"), "sources[0] ('a') needs a non-negative int 'count'"),
        (lambda h: h.update(achieved_count=99), "sum to 9 but achieved_count is 99"),
    ],
)
def test_invalid_cards_name_the_key(tmp_path, mutate, message):
    path = write_mixture_card(tmp_path / "card.md", REPORT, "x", {"d": "0" * 64}, ["messages"], "s")
    text = path.read_text()
    head = yaml.safe_load(text.split("---\n")[1])
    mutate(head)
    bad = tmp_path / "bad.md"
    bad.write_text("---\n" + yaml.safe_dump(head) + "---\n\nbody\n")
    with pytest.raises(CardError) as err:
        validate_card(bad)
    assert str(bad) in str(err.value) and message in str(err.value)


def test_card_needs_header_and_body(tmp_path):
    p = tmp_path / "c.md"
    p.write_text("# no header\n")
    with pytest.raises(CardError, match="starts with"):
        validate_card(p)
    p.write_text("---\nname: x\n---\n\n")
    with pytest.raises(CardError):
        validate_card(p)


def test_every_recipe_dataset_has_a_valid_card():
    cards = {validate_card(p)["name"]: p for p in sorted((REPO / "data_cards").glob("*.md"))}
    named = {"asdiv", "humaneval"}  # the decontamination eval sets
    for recipe in ("tiny", "paper"):
        data = yaml.safe_load((REPO / "recipes" / "data" / f"{recipe}.yaml").read_text())
        for block in ("sft_broad", "sft_hard"):
            named |= {src["name"] for src in data[block]["sources"]}
    missing = sorted(named - set(cards))
    assert not missing, f"recipes name datasets without a card in data_cards/: {missing}"
    assert len(named) >= 11
