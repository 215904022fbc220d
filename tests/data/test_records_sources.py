"""Sources and chat normalisation: every format, every kind of bad row, skip_bad_rows counting.

Run: python -m pytest -q tests/data/test_records_sources.py
"""

import json

import pytest

from alignment.data.records import BadRowError, normalize_row
from alignment.data.sources import SourceSpec, load_source

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _jsonl(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "row, expected_user, expected_assistant",
    [
        (GOOD, "hi", "hello"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "q", "a"),  # ShareGPT
        ({"prompt": "p", "response": "r"}, "p", "r"),
        ({"prompt": "p", "completion": "c"}, "p", "c"),
        ({"instruction": "do it", "input": "ctx", "output": "done"}, "do it\n\nctx", "done"),  # alpaca with input
        ({"instruction": "do it", "input": "", "output": "done"}, "do it", "done"),  # alpaca, empty input
    ],
)
def test_formats_normalise_to_chat_messages(row, expected_user, expected_assistant):
    rec = normalize_row(row, "auto", "src", "f.jsonl:1")
    assert rec["source"] == "src"
    users = [m["content"] for m in rec["messages"] if m["role"] == "user"]
    assert users == [expected_user]
    assert rec["messages"][-1] == {"role": "assistant", "content": expected_assistant}


def test_prompt_response_keeps_system():
    rec = normalize_row({"system": "be brief", "prompt": "p", "response": "r"}, "prompt_response", "s", "x:1")
    assert rec["messages"][0] == {"role": "system", "content": "be brief"}


BAD_ROWS = [
    ("bad_json", '{"messages": [', "invalid JSON"),
    ("missing_messages", json.dumps({"text": "no chat here"}), "cannot tell the format"),
    ("missing_messages", json.dumps({"messages": [{"content": "x"}]}), "no 'role'"),
    ("unknown_role", json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}), "wizard"),
    ("empty_content", json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}), "empty"),
    ("wrong_type", json.dumps({"messages": "user: hi"}), "expected a list"),
    ("wrong_type", json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}), "int"),
    ("wrong_type", json.dumps(["not", "an", "object"]), "expected a JSON object"),
    ("wrong_type", json.dumps({"prompt": ["p"], "response": "r"}), "'prompt' is a list"),
    ("no_assistant", json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "end with an assistant"),
]


@pytest.mark.parametrize("kind, line, fragment", BAD_ROWS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_ROWS)])
def test_bad_row_error_names_file_and_line(tmp_path, kind, line, fragment):
    path = _jsonl(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), line])
    with pytest.raises(BadRowError) as err:
        load_source(SourceSpec(name="s", path=str(path)))
    assert err.value.kind == kind
    assert f"{path}:3" in str(err.value)
    assert fragment in str(err.value)


def test_skip_bad_rows_drops_and_counts_each_kind(tmp_path):
    lines = [json.dumps(GOOD)] + [line for _, line, _ in BAD_ROWS] + [json.dumps(GOOD)]
    path = _jsonl(tmp_path, lines)
    loaded = load_source(SourceSpec(name="s", path=str(path), skip_bad_rows=True))
    assert len(loaded.records) == 2
    assert loaded.n_bad == len(BAD_ROWS)
    expected = {}
    for kind, _, _ in BAD_ROWS:
        expected[kind] = expected.get(kind, 0) + 1
    assert dict(loaded.bad_by_kind) == expected
    assert loaded.bad_examples[0].startswith(f"{path}:2")


def test_parquet_and_arrow_and_json_array_sources(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for path in (tmp_path / "d.parquet", tmp_path / "saved", arrow, tmp_path / "d.json"):
        loaded = load_source(SourceSpec(name="t", path=str(path), format="prompt_response"))
        assert [r["messages"][1]["content"] for r in loaded.records] == [f"r{i}" for i in range(5)], path


def test_parquet_bad_row_names_row_index(tmp_path):
    import datasets

    rows = [{"prompt": "p", "response": "r"}, {"prompt": "p", "response": ""}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(BadRowError, match=r"d\.parquet:row 1: bad row \(empty_content\)"):
        load_source(SourceSpec(name="t", path=str(tmp_path / "d.parquet")))


def test_builtin_sources_are_real_data():
    en = load_source(SourceSpec(name="en", path="builtin:chatterbot_en"))
    zh = load_source(SourceSpec(name="zh", path="builtin:chatterbot_zh"))
    math = load_source(SourceSpec(name="m", path="builtin:synthetic_math", size=50), seed=3)
    assert len(en.records) > 2000 and len(zh.records) > 450
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh.records[0]["messages"][0]["content"])
    # asked and answered in the one task format (alignment/tasks/format.py)
    from alignment.tasks.format import MATH_INSTRUCTION, split_final_answer

    assert len(math.records) == 50
    assert all(r["messages"][0]["content"].startswith(MATH_INSTRUCTION) for r in math.records)
    assert all(split_final_answer(r["messages"][-1]["content"])[1] for r in math.records)
    assert all(r["source"] == "m" for r in math.records)
    again = load_source(SourceSpec(name="m", path="builtin:synthetic_math", size=50), seed=3)
    assert again.records == math.records


@pytest.mark.parametrize("family", ["templates", "gsm_symbolic"])
def test_task_family_sources_are_verified_worked_solutions(family):
    from alignment.tasks.format import MATH_INSTRUCTION, split_final_answer
    from alignment.tasks.problems import load_problems
    from alignment.tasks.verify import record_pass_rate

    recs = load_source(SourceSpec(name="t", path=f"builtin:task_{family}", size=120), seed=0).records
    assert 100 <= len(recs) <= 120  # gsm drops the references with float noise
    assert len({r["messages"][0]["content"] for r in recs}) == len(recs)  # each problem once
    for r in recs:
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        assert user.startswith(MATH_INSTRUCTION + "\n\n")
        assert split_final_answer(answer)[1] == r["task"]["answer"] and r["task"]["kind"] == "math"
    # the record's own answer verifies, a wrong final answer does not: what sft_hard's pass rates use
    assert record_pass_rate(recs[0], [recs[0]["messages"][1]["content"]]) == 1.0
    assert record_pass_rate(recs[0], ["#### 123456789", recs[0]["messages"][1]["content"]]) == 0.5
    assert record_pass_rate({"messages": recs[0]["messages"]}, ["x"]) is None  # no task: no verifier
    # never an eval instance
    fresh = {p.prompt for p in load_problems(family, "train_heldout", 200, seed=1234)}
    assert not any(r["messages"][0]["content"].split("\n\n", 1)[1] in fresh for r in recs)


def test_builtin_seed_override_draws_other_problems():
    a = load_source(SourceSpec(name="t", path="builtin:task_templates", size=20), seed=0).records
    b = load_source(SourceSpec(name="t", path="builtin:task_templates", size=20, seed=1), seed=0).records
    c = load_source(SourceSpec(name="t", path="builtin:task_templates", size=20), seed=1).records
    assert [r["id"] for r in b] == [r["id"] for r in c] and {r["id"] for r in a}.isdisjoint({r["id"] for r in b})
    prompts = lambda rs: {r["messages"][0]["content"] for r in rs}  # noqa: E731
    assert len(prompts(a) & prompts(b)) <= 2  # new draws (a small level-1 template may repeat one)


def test_synthetic_math_answers_are_correct():
    import re

    recs = load_source(SourceSpec(name="m", path="builtin:synthetic_math", size=200)).records
    for r in recs:
        # Every "a op b = c" step the generator writes must be arithmetically true.
        for a, op, b, c in re.findall(r"(-?\d+) ([-+*]) (\d+) = (-?\d+)", r["messages"][1]["content"]):
            assert eval(f"{a} {op} {b}") == int(c), r


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_source(SourceSpec(name="x", path=str(tmp_path / "d.csv")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(SourceSpec(name="x", path=str(tmp_path / "nope.jsonl")))
