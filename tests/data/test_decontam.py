"""30-gram decontamination against the project's eval sets (ASDiv, HumanEval, held-out files).

Run: python -m pytest -q tests/data/test_decontam.py
"""

import json

import pytest

from alignment.data.decontam import DecontamSpec, NgramIndex, asdiv_texts, build_index, decontaminate, humaneval_texts, words


def _rec(text, answer="ok"):
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}], "source": "s", "id": text[:10]}


@pytest.fixture(scope="module")
def index():
    return build_index(DecontamSpec())


def test_eval_sets_are_loaded_from_packages(index):
    assert index.counts["humaneval"] == 164
    assert index.counts["asdiv"] > 2000  # short problems matched whole (>= 8 words)
    assert len(asdiv_texts()) == 2305 and len(humaneval_texts()) == 164


def test_humaneval_leak_is_dropped_even_reformatted(index):
    prompt = humaneval_texts()[0]
    w = words(prompt)
    assert len(w) >= 40
    # 30 consecutive words of the prompt, re-cased, re-punctuated and embedded in other text.
    leak = "Here is a task: " + " , ".join(w[5:35]).upper() + " -- please solve."
    kept, hits = decontaminate([_rec(leak), _rec("write a function that reverses a list")], index)
    assert hits == {"humaneval": 1}
    assert [r["messages"][0]["content"] for r in kept] == ["write a function that reverses a list"]


def test_29_words_do_not_match(index):
    w = words(humaneval_texts()[3])
    kept, hits = decontaminate([_rec(" ".join(w[:29]) + " banana")], index)
    assert hits == {} and len(kept) == 1


def test_short_asdiv_problem_is_matched_whole(index):
    text = asdiv_texts()[0]  # "Seven red apples and two green apples are in the basket. How many apples ..."
    assert len(words(text)) < 30
    kept, hits = decontaminate([_rec(f"Solve this: {text} Think step by step.")], index)
    assert hits == {"asdiv": 1} and kept == []
    # Part of it is not enough: the whole eval text must appear.
    partial = " ".join(words(text)[:-2])
    assert decontaminate([_rec(partial)], index)[1] == {}


def test_heldout_file_and_cjk(tmp_path):
    held = tmp_path / "heldout.jsonl"
    zh = "小明有十二个苹果又得到了七个苹果然后送出三个苹果小明现在有多少个苹果"
    held.write_text(json.dumps({"messages": [{"role": "user", "content": zh}], "answer": "16"}, ensure_ascii=False) + "\n")
    idx = build_index(DecontamSpec(asdiv=False, humaneval=False, extra_paths=[str(held)], ngram=30))
    assert idx.counts == {"heldout:heldout.jsonl": 1}
    kept, hits = decontaminate([_rec("请回答:" + zh), _rec("小明有十二个苹果")], idx)
    assert hits == {"heldout:heldout.jsonl": 1} and len(kept) == 1


def test_bad_eval_file_names_line(tmp_path):
    held = tmp_path / "h.jsonl"
    held.write_text('{"q": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:2"):
        build_index(DecontamSpec(asdiv=False, humaneval=False, extra_paths=[str(held)]))


def test_index_validates_sizes():
    with pytest.raises(ValueError, match="min_tokens"):
        NgramIndex(n=5, min_tokens=8)
