"""The one prompt and answer format of every task, used by SFT data, synth, online DPO and eval.

A *problem* is anything with ``kind`` ("math" or "code") and ``prompt`` (alignment.tasks.problems.Problem,
or a row of a prompts file). The policy sees one user turn: the instruction of its kind, a blank
line, the problem text. Math answers are worked solutions, one step per line, whose last line is
``#### <answer>`` (GSM8K's form: short for a small model, and what the reference solutions of
our problem sources already end with); code answers are one fenced ``python`` block with the
complete function. Keeping this in one place is what lets a stage measure what an earlier stage
taught: the same words at SFT time, in search, in the online-DPO rollouts and at eval.

    from alignment.tasks.format import user_message, chat_render, final_answer_line
    user_message(problem)              # "Solve the problem step by step, ...\\n\\n<problem>"
    final_answer_line("42")            # "#### 42"
    split_final_answer("a\\nb\\n#### 42")  # ("a\\nb", "42")
"""

from __future__ import annotations

from typing import Any, Callable

FINAL_ANSWER_MARK = "####"
MATH_INSTRUCTION = (
    "Solve the problem step by step, one step per line. "
    f"Write the final answer on the last line as '{FINAL_ANSWER_MARK} <answer>'."
)
CODE_INSTRUCTION = "Solve the task in Python. Answer with one ```python code block containing the complete function."
INSTRUCTIONS = {"math": MATH_INSTRUCTION, "code": CODE_INSTRUCTION}


def instruction(kind: str) -> str:
    """The instruction of a task kind."""
    try:
        return INSTRUCTIONS[kind]
    except KeyError:
        raise ValueError(f"unknown task kind {kind!r}: expected one of {sorted(INSTRUCTIONS)}") from None


def task_message(kind: str, prompt: str) -> str:
    """The user turn for a problem of ``kind`` worded ``prompt``."""
    return f"{instruction(kind)}\n\n{prompt}"


def user_message(problem: Any) -> str:
    """The user turn for a problem object (``.kind``, ``.prompt``)."""
    return task_message(problem.kind, problem.prompt)


def plain_render(problem: Any) -> str:
    """Plain-text prompt, for a tokenizer without a chat template (the scripted test policies)."""
    return f"{instruction(problem.kind)}\n\nProblem:\n{problem.prompt}\n\nSolution:\n"


def chat_render(tokenizer) -> Callable[[Any], str]:
    """Render problems with the tokenizer's chat template: the user turn + the generation prompt."""

    def render(problem: Any) -> str:
        msgs = [{"role": "user", "content": user_message(problem)}]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    return render


def final_answer_line(answer: Any) -> str:
    """The last line of a math solution."""
    return f"{FINAL_ANSWER_MARK} {answer}"


def math_solution(steps: list[str], answer: Any) -> str:
    """A worked math solution in the task format: the steps, one per line, then the answer line."""
    return "\n".join([*steps, final_answer_line(answer)])


def split_final_answer(solution: str) -> tuple[str, str | None]:
    """``(working, answer)`` of a solution in the task format; ``(solution, None)`` without an answer line."""
    body, mark, final = solution.rpartition(FINAL_ANSWER_MARK)
    if not mark:
        return solution, None
    return body.rstrip("\n"), final.strip()
