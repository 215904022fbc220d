"""The one task format (alignment/tasks/format.py) is what every stage uses: SFT data, synth prompts,
online-DPO prompts, eval prompts and reference solutions all carry the same instruction and answer line."""

import pytest

from alignment.tasks.format import (
    MATH_INSTRUCTION, chat_render, final_answer_line, math_solution, split_final_answer, task_message, user_message,
)


def test_answer_line_round_trip():
    sol = math_solution(["2 + 3 = 5.", "5 * 2 = 10."], 10)
    assert sol.endswith("\n" + final_answer_line(10)) and split_final_answer(sol) == ("2 + 3 = 5.\n5 * 2 = 10.", "10")
    assert split_final_answer("no final line") == ("no final line", None)
    with pytest.raises(ValueError, match="unknown task kind"):
        task_message("essay", "x")


def test_every_consumer_words_a_problem_the_same_way(tiny_tokenizer):
    from alignment.data.builtin import synthetic_math_records
    from alignment.train.online_dpo import to_prompt_item
    from reward.pairs import reference_pairs
    from alignment.tasks.problems import load_problems
    from alignment.tasks.verify import get_verifier

    problem = load_problems("templates", "train", 1, 0)[0]
    turn = user_message(problem)
    # online DPO: the user turn of the chat prompt
    assert to_prompt_item(problem, 0, "t", chat=True).prompt == [{"role": "user", "content": turn}]
    # synth and eval: the chat template around the same turn
    assert turn in chat_render(tiny_tokenizer)(problem)
    # reward-model reference pairs: the same prompt; the reference ends with the answer line and verifies
    pair = reference_pairs("templates", "train", n=1, seed=0)[0]
    assert pair["prompt"] == turn and split_final_answer(pair["chosen"])[1] == problem.answer
    assert get_verifier("math").verify(problem, problem.meta["reference"]).passed
    # SFT data: the same instruction, the same answer line, and the verifier reads its answers
    rec = synthetic_math_records(3, seed=1)[0]
    assert rec["messages"][0]["content"].startswith(MATH_INSTRUCTION + "\n\n")
    assert split_final_answer(rec["messages"][1]["content"])[1] is not None
