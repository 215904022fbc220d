"""Preference pairs: layouts, errors naming file/row/key, phase-2 curation, prompt split, reference pairs.

Run: python -m pytest -q tests/reward/test_pairs.py
"""

from __future__ import annotations

import json

import pytest

from reward.pairs import (PairFormatError, curate_pairs, load_pairs, normalize_pair, prompt_key, reference_pairs,
                          split_by_prompt)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, prompt, chosen, rejected", [
    # plain strings with an explicit prompt
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, "2+2?", "4", "5"),
    # the synth stage's layout: message lists, scores under chosen_score/rejected_score
    ({"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
      "rejected": [{"role": "assistant", "content": "5"}], "chosen_score": 1.0, "rejected_score": 0.0,
      "problem_id": "x"}, [{"role": "user", "content": "2+2?"}], "4", "5"),
    # TRL implicit prompt: whole conversations sharing the user turn
    ({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]},
     [{"role": "user", "content": "hi"}], "hello", "go away"),
])
def test_normalize_layouts(row, prompt, chosen, rejected):
    p = normalize_pair(row, "f:1", "src")
    assert (p["prompt"], p["chosen"], p["rejected"], p["source"]) == (prompt, chosen, rejected, "src")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x", "chosen": "a"}, r"f.jsonl:2: missing key 'rejected'"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     r"f.jsonl:2: key 'chosen' is a message list that does not end with an assistant turn"),
    ({"chosen": "a", "rejected": "b"}, r"f.jsonl:2: missing key 'prompt'"),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "chosen_score": "high"}, r"f.jsonl:2: key 'chosen_score' must be a number"),
    ({"prompt": ["not a message"], "chosen": "a", "rejected": "b"}, r"f.jsonl:2: key 'prompt' must be a string or a list"),
])
def test_bad_rows_name_file_line_and_key(tmp_path, row, message):
    path = _jsonl(tmp_path / "f.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(PairFormatError, match=message):
        load_pairs(path)


def test_load_folder_json_and_empty(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"prompt": "p1", "chosen": "a", "rejected": "b"}])
    _jsonl(tmp_path / "b.jsonl", [{"prompt": "p2", "chosen": "c", "rejected": "d"}])
    assert [r["prompt"] for r in load_pairs(tmp_path)] == ["p1", "p2"]
    (tmp_path / "x.json").write_text(json.dumps({"train": [{"prompt": "p", "chosen": "a", "rejected": "b"}]}))
    assert load_pairs(tmp_path / "x.json")[0]["source"] == "x"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PairFormatError, match="no preference pairs"):
        load_pairs(tmp_path / "empty.jsonl")
    assert load_pairs(tmp_path / "empty.jsonl", allow_empty=True) == []
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        load_pairs(tmp_path / "missing.jsonl")


def test_curate_highest_vs_lowest_and_min_gap():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 0.9, "rejected_score": 0.4, "source": "s"},
        {"prompt": "p", "chosen": "c", "rejected": "d", "chosen_score": 0.7, "rejected_score": 0.1, "source": "s"},
        {"prompt": "q", "chosen": "e", "rejected": "f", "chosen_score": 0.6, "rejected_score": 0.5, "source": "s"},
        {"prompt": "r", "chosen": "g", "rejected": "h", "chosen_score": None, "rejected_score": None, "source": "s"},
    ]
    out = curate_pairs(rows, min_gap=0.3)
    # p: best a (0.9) vs worst d (0.1); q: gap 0.1 < 0.3 dropped; r: unscored = label 1 vs 0, kept
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [("p", "a", "d"), ("r", "g", "h")]
    assert out[0]["chosen_score"] - out[0]["rejected_score"] == pytest.approx(0.8)
    assert curate_pairs(rows, min_gap=1.5) == []


def test_curate_ties_follow_the_online_pair_rule():
    """Curation and online DPO share one rule (alignment/train/pair_rule.py): a tie gives no pair even at
    min_gap 0, and among equal best scores the answer seen first is chosen."""
    tie = [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 0.5, "rejected_score": 0.5, "source": "s"}]
    assert curate_pairs(tie, min_gap=0.0) == []
    rows = [{"prompt": "p", "chosen": "a", "rejected": "z", "chosen_score": 0.9, "rejected_score": 0.1, "source": "s"},
            {"prompt": "p", "chosen": "b", "rejected": "z", "chosen_score": 0.9, "rejected_score": 0.1, "source": "s"}]
    assert [(r["chosen"], r["rejected"]) for r in curate_pairs(rows, min_gap=0.0)] == [("a", "z")]
    with pytest.raises(PairFormatError, match="non-finite"):
        curate_pairs([{**rows[0], "chosen_score": float("nan")}], min_gap=0.0)


def test_split_by_prompt_is_disjoint_deterministic_and_format_blind():
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": str(j)} for i in range(40) for j in range(2)]
    # the same problem in the synth layout (one user turn) must fall on the same side
    rows += [{"prompt": [{"role": "user", "content": "q3"}], "chosen": "x", "rejected": "y"}]
    train, held = split_by_prompt(rows, 0.25, seed=1)
    assert (train, held) == split_by_prompt(rows, 0.25, seed=1)
    tk, hk = {prompt_key(r["prompt"]) for r in train}, {prompt_key(r["prompt"]) for r in held}
    assert not tk & hk and len(tk | hk) == 40 and 4 <= len(hk) <= 18
    assert split_by_prompt(rows, 0.25, seed=2)[1] != held
    assert split_by_prompt(rows[0:4:2], 0.01)[1], "two or more prompts always give a non-empty held-out side"


def test_reference_pairs_pass_and_fail_the_math_verifier():
    from alignment.tasks.format import user_message
    from alignment.tasks.problems import load_problems
    from alignment.tasks.verify import get_verifier

    pairs = reference_pairs("templates", "train", n=12, seed=0)
    # the reward model sees the prompt the policy saw: the task's one user turn
    problems = {user_message(p): p for p in load_problems("templates", "train", n=12, seed=0)}
    verifier = get_verifier("math")
    assert len(pairs) >= 10
    for pair in pairs:
        problem = problems[pair["prompt"]]
        assert verifier.verify(problem, pair["chosen"]).passed, pair["chosen"]
        assert not verifier.verify(problem, pair["rejected"]).passed, pair["rejected"]
        # a hard negative: the working is the same up to its last line
        assert pair["chosen"].split("\n")[:-2] == pair["rejected"].split("\n")[:-2]
    assert load_pairs("problems:templates:train:12") == pairs
