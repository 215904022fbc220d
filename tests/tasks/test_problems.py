"""Problem sources: template splits are disjoint, loading is deterministic, eval sets stay eval-only."""

import pytest

from alignment.tasks.problems import Problem, load_problems
from alignment.tasks.verify import get_verifier


@pytest.mark.parametrize("source", ["gsm_symbolic", "templates"])
def test_train_and_heldout_use_disjoint_templates(source):
    train = {p.meta["template"] for p in load_problems(source, "train", 200, seed=0)}
    held = {p.meta["template"] for p in load_problems(source, "heldout", 100, seed=0)}
    assert train and held and not (train & held)


def test_template_split_is_fixed():
    from alignment.tasks.problems.gsm import template_split as gsm_split
    from alignment.tasks.problems.templates import template_split

    train, held = template_split()
    assert len(held) == 3 and len(train) == 9
    g_train, g_held = gsm_split()
    assert len(g_held) == round(0.2 * (len(g_train) + len(g_held)))


@pytest.mark.parametrize("source", ["gsm_symbolic", "templates"])
def test_same_seed_same_problems(source):
    a = load_problems(source, "train", 20, seed=3)
    b = load_problems(source, "train", 20, seed=3)
    c = load_problems(source, "train", 20, seed=4)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]


@pytest.mark.parametrize("source, split", [("gsm_symbolic", "train"), ("templates", "train"), ("templates", "heldout"), ("asdiv", "test")])
def test_reference_answers_verify(source, split):
    v = get_verifier("math")
    for p in load_problems(source, split, 60, seed=0):
        ref = p.meta.get("reference") or f"#### {p.answer}"
        assert v.verify(p, ref).passed, (p.id, p.answer, ref)


def test_templates_are_bilingual_with_levels():
    ps = load_problems("templates", "train", 80, seed=0)
    assert {p.meta["lang"] for p in ps} == {"en", "zh"}
    assert {p.difficulty for p in ps} == {1.0, 2.0, 3.0}
    zh = load_problems("templates", "train", 5, seed=0, lang="zh")
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in p.prompt) for p in zh)


@pytest.mark.parametrize("source", ["asdiv", "humaneval"])
def test_eval_sets_refuse_training_splits(source):
    with pytest.raises(ValueError, match="not 'train'"):
        load_problems(source, "train", 5)


def test_eval_set_sizes():
    assert len(load_problems("humaneval", "test")) == 164
    asdiv = load_problems("asdiv", "test")
    assert len(asdiv) == 2168  # numeric answers only (times, ratios, names dropped)


def test_codeio_tasks_have_working_tests():
    ps = load_problems("codeio", "train", 3, seed=0)
    held = {p.id for p in load_problems("codeio", "heldout", None, seed=0)}
    assert ps and not ({p.id for p in ps} & held)
    v = get_verifier("code")
    verdicts = v.verify_many(ps, [p.meta["reference"] for p in ps])
    assert all(x.passed for x in verdicts), [x.detail for x in verdicts]
    broken = v.verify(ps[0], "```python\ndef main_solution(**kw):\n    return None\n```")
    assert not broken.passed


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="unknown problem source"):
        load_problems("gsm8k", "train", 1)
    with pytest.raises(ValueError, match="pass n"):
        load_problems("templates", "train", None)
    with pytest.raises(ValueError, match="need an answer"):
        Problem(id="x", kind="math", prompt="?")


@pytest.mark.parametrize("source", ["gsm_symbolic", "templates"])
def test_train_heldout_instances_are_never_drawn_for_training(source):
    from alignment.tasks.problems import instance_is_heldout

    fresh = load_problems(source, "train_heldout", 150, seed=1234)
    # many seeds and a large draw of training problems: none of them is an eval instance
    train = [p for seed in (0, 1, 2) for p in load_problems(source, "train", 400, seed=seed)]
    assert not {p.prompt for p in fresh} & {p.prompt for p in train}
    assert {p.meta["template"] for p in fresh} <= {p.meta["template"] for p in train}  # the same families
    assert len({p.prompt for p in fresh}) == len(fresh)  # each instance once
    held_templates = {p.meta["template"] for p in load_problems(source, "heldout", 50, seed=0)}
    assert not {p.meta["template"] for p in fresh} & held_templates
    assert not any(instance_is_heldout(f"{p.meta['template']}:{p.prompt}") for p in train if p.meta["lang"] == "en")


def test_an_instance_is_held_out_in_both_languages():
    # the instance key is the template and its numbers, not the wording: with the language fixed the
    # draws are the same, so en and zh give the same instances, and neither wording is ever trained on
    en = load_problems("templates", "train_heldout", 60, seed=5, lang="en")
    zh = load_problems("templates", "train_heldout", 60, seed=5, lang="zh")
    assert [p.id for p in en] == [p.id for p in zh] and [p.answer for p in en] == [p.answer for p in zh]
    assert all(a.prompt != b.prompt for a, b in zip(en, zh))
    train_zh = {p.prompt for seed in (0, 1) for p in load_problems("templates", "train", 2000, seed=seed, lang="zh")}
    assert not train_zh & {p.prompt for p in zh}


def test_too_small_instance_space_is_named():
    with pytest.raises(ValueError, match="templates/train_heldout: only .* distinct problems"):
        load_problems("templates", "train_heldout", 500, seed=0, levels=(1,), lang="en")


def test_training_problems_refuse_eval_splits():
    from alignment.errors import ConfigError
    from alignment.tasks.problems import ProblemSpec, training_problems

    assert len(training_problems([ProblemSpec("templates", 3), {"source": "gsm_symbolic", "n": 2}])) == 5
    for spec in (ProblemSpec("templates", 3, split="train_heldout"), ProblemSpec("asdiv", 3, split="test")):
        with pytest.raises(ConfigError, match=r"prompts\[0\]: training uses train splits only"):
            training_problems([spec], "prompts")
    with pytest.raises(ConfigError, match="duplicate problem ids"):
        training_problems([ProblemSpec("templates", 3), ProblemSpec("templates", 3)])
