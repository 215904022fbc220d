"""Preference pairs for the reward model: load, validate, curate, split.

A pair row, after :func:`normalize_pair`, is a plain dict::

    {"prompt": str | list[{"role", "content"}],   # the conversation before the answer
     "chosen": str, "rejected": str,               # the two assistant answers
     "chosen_score": float | None,                 # e.g. verifier score / RM score of each side
     "rejected_score": float | None,
     "source": str}                                # where the row came from (file name, hub id, ...)

Sources (:func:`load_pairs`) are any of

- a JSONL / JSON file, or a folder of ``*.jsonl`` files: e.g. the synth stage's ``pairs`` output, whose
  rows are ``{prompt, chosen, rejected, ...}`` (extra keys are kept where we know them, else ignored);
- a folder written by ``datasets.Dataset.save_to_disk``;
- a Hugging Face hub id such as ``trl-lib/ultrafeedback_binarized`` (``datasets.load_dataset``; needs
  network access, which CI does not have).

- ``problems:<source>[:<split>[:<n>]]``, e.g. ``problems:gsm_symbolic:train:2000``: offline pairs built
  from ``alignment.tasks.problems`` reference solutions (chosen) and the same solution with a wrong final answer
  (rejected) - broad pairs for phase 1 where no public preference set can be downloaded
  (:func:`reference_pairs`).

Both TRL preference layouts are accepted: explicit prompt (``prompt`` + ``chosen``/``rejected`` as
strings or assistant message lists) and implicit prompt (``chosen``/``rejected`` are whole
conversations sharing the prompt turns).

The two training phases of the Yi-Lightning recipe read pairs differently:

- phase 1 (preference-model pre-training) uses every pair of its broad sources as is;
- phase 2 (fine-tuning) uses :func:`curate_pairs`: for each prompt, the highest-scored answer vs the
  lowest-scored one, dropped when the score gap is under ``min_gap`` (online DPO's pair rule,
  ``alignment/train/pair_rule.py``, decides it: one home for ties and gaps).

Held-out evaluation splits by prompt (:func:`split_by_prompt`) so no prompt is on both sides.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterable

from alignment.artifacts import iter_jsonl, read_text
from alignment.errors import DataError, MissingFileError
from alignment.tasks.format import final_answer_line, split_final_answer, user_message

__all__ = ["load_pairs", "reference_pairs", "normalize_pair", "curate_pairs", "split_by_prompt", "prompt_key", "prompt_text"]

Prompt = str | list[dict[str, str]]


class PairFormatError(DataError):
    """A pair row that cannot be used; the message names the source, the row and the key."""


def _messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
        raise PairFormatError(f"{where}: key '{key}' must be a string or a list of {{role, content}} messages "
                              f"(strings), got {type(value).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _answer(value: Any, where: str, key: str) -> tuple[list[dict[str, str]], str]:
    """Split a chosen/rejected value into (leading turns, final assistant text)."""
    if isinstance(value, str):
        return [], value
    msgs = _messages(value, where, key)
    if not msgs or msgs[-1]["role"] != "assistant":
        raise PairFormatError(f"{where}: key '{key}' is a message list that does not end with an assistant turn")
    return msgs[:-1], msgs[-1]["content"]


def _score(row: dict, keys: tuple[str, ...], where: str) -> float | None:
    for k in keys:
        if k in row and row[k] is not None:
            try:
                return float(row[k])
            except (TypeError, ValueError):
                raise PairFormatError(f"{where}: key '{k}' must be a number, got {row[k]!r}") from None
    return None


def normalize_pair(row: dict, where: str, source: str) -> dict:
    """Validate one raw row and return the normalized pair dict (see the module docstring).

    Args:
        row (`dict`): the raw row.
        where (`str`): ``file:line`` (or ``hub-id[index]``) for error messages.
        source (`str`): value for the ``source`` field when the row has none.
    """
    if not isinstance(row, dict):
        raise PairFormatError(f"{where}: a pair row must be a JSON object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise PairFormatError(f"{where}: missing key '{key}' (a pair row needs chosen and rejected; has {sorted(row)})")
    lead_c, chosen = _answer(row["chosen"], where, "chosen")
    lead_r, rejected = _answer(row["rejected"], where, "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt: Prompt = row["prompt"] if isinstance(row["prompt"], str) else _messages(row["prompt"], where, "prompt")
        if lead_c or lead_r:
            # explicit prompt plus multi-turn answers: the extra turns belong to the prompt
            if lead_c != lead_r:
                raise PairFormatError(f"{where}: chosen and rejected carry different leading turns")
            prompt = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + lead_c
    else:
        # implicit prompt (TRL): both conversations share the prompt turns
        if not lead_c or lead_c != lead_r:
            raise PairFormatError(
                f"{where}: missing key 'prompt', and chosen/rejected are not conversations with a shared prompt"
            )
        prompt = lead_c
    if isinstance(prompt, str) and not prompt.strip():
        raise PairFormatError(f"{where}: key 'prompt' is empty")
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_score": _score(row, ("chosen_score", "score_chosen", "chosen_reward"), where),
        "rejected_score": _score(row, ("rejected_score", "score_rejected", "rejected_reward"), where),
        "source": str(row.get("source") or source),
    }


def _read_json_rows(path: Path) -> Iterable[tuple[str, Any]]:
    if path.suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise PairFormatError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise PairFormatError(f"{path}: expected a JSON list of rows (or an object holding one list)")
            data = lists[0]
        if not isinstance(data, list):
            raise PairFormatError(f"{path}: expected a JSON list of rows")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
        return
    yield from iter_jsonl(path)  # bad UTF-8, JSON or an over-long line raise naming the file and line


def _wrong_answer(answer: str, rng: random.Random) -> str:
    try:
        value = float(answer)
    except ValueError:
        return answer + "0"
    delta = rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    wrong = value + delta
    if wrong < 0 <= value:  # a negative count would be an easy tell
        wrong = value + abs(delta)
    return str(int(wrong)) if wrong == int(wrong) and "." not in answer else f"{wrong:g}"


def reference_pairs(source: str, split: str = "train", n: int = 1000, seed: int = 0) -> list[dict]:
    """Pairs from problems' worked reference solutions: the reference vs the reference with a wrong answer.

    The rejected answer keeps every step but its final result (a hard negative: only the answer differs),
    so the pair teaches "the right answer beats a plausible wrong one". Problems without a reference or a
    numeric-looking answer in it are skipped. Only training splits should be used (the held-out templates
    are the eval sets).
    """
    from alignment.tasks.problems import load_problems

    rng = random.Random(seed)
    rows = []
    for p in load_problems(source, split, n=n, seed=seed):
        ref = p.meta.get("reference")
        body, final = split_final_answer(ref) if p.kind == "math" and ref else ("", None)
        if not final:
            continue
        wrong = _wrong_answer(final, rng)
        # the last line of the working usually states the result too: change it there as well
        head, sep, last = body.rpartition("\n")
        last = last[::-1].replace(final[::-1], wrong[::-1], 1)[::-1] if final in last else last
        rejected = f"{head}{sep}{last}\n{final_answer_line(wrong)}"
        rows.append({"prompt": user_message(p), "chosen": ref, "rejected": rejected, "chosen_score": 1.0,
                     "rejected_score": 0.0, "source": f"reference:{source}"})
    return rows


def load_pairs(spec: str | Path, split: str = "train", limit: int | None = None,
               allow_empty: bool = False) -> list[dict]:
    """Load and normalize preference pairs from a file, a folder or a hub id.

    Args:
        spec (`str` or `Path`): ``*.jsonl`` / ``*.json`` file, folder of ``*.jsonl``, ``save_to_disk``
            folder, or hub dataset id.
        split (`str`, *optional*, defaults to `"train"`): split for hub ids and ``DatasetDict`` folders.
        limit (`int`, *optional*): keep at most this many rows (the first ones).
        allow_empty (`bool`, *optional*, defaults to `False`): return ``[]`` for a source without pairs
            instead of raising (a weak policy's synth run may verify nothing).

    Returns:
        `list[dict]`: normalized pairs.
    """
    if str(spec).startswith("problems:"):
        parts = str(spec).split(":")
        if len(parts) > 4 or not parts[1] or (len(parts) > 3 and not (parts[3].isdigit() and int(parts[3]) > 0)):
            raise PairFormatError(f"pair source {spec!r}: expected problems:<source>[:<split>[:<n>]] (n a positive count)")
        n = int(parts[3]) if len(parts) > 3 else (limit or 1000)
        rows = reference_pairs(parts[1], parts[2] if len(parts) > 2 else "train", n=n)
        return rows[:limit] if limit is not None else rows
    path = Path(spec)
    rows: list[dict] = []
    if path.is_file():
        raw = _read_json_rows(path)
        source = path.stem
    elif path.is_dir() and any(path.glob("*.jsonl")):
        raw = (item for f in sorted(path.glob("*.jsonl")) for item in _read_json_rows(f))
        source = path.name
    elif path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise PairFormatError(f"{path}: no split '{split}' (has {sorted(ds)})")
            ds = ds[split]
        raw = ((f"{path}[{i}]", r) for i, r in enumerate(ds))
        source = path.name
    elif path.suffix in (".jsonl", ".json") or str(spec).startswith((".", "/")):
        raise MissingFileError(f"preference data {spec} does not exist")
    else:
        import datasets

        ds = datasets.load_dataset(str(spec), split=split)
        raw = ((f"{spec}[{i}]", r) for i, r in enumerate(ds))
        source = str(spec)
    for where, row in raw:
        if limit is not None and len(rows) >= limit:
            break
        rows.append(normalize_pair(row, where, source))
    if not rows and not allow_empty:
        raise PairFormatError(f"{spec}: no preference pairs found")
    return rows


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one string (the last user turn for conversations), for tables and reports."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def prompt_key(prompt: Prompt) -> str:
    """A stable identity for a prompt: its text, or for a longer conversation its full JSON.

    A one-user-turn conversation and the plain string of that turn are the same prompt (and encode to
    the same tokens), so a problem seen as ``"..."`` in one source and ``[{"role": "user", ...}]`` in
    another lands on the same side of the held-out split.
    """
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def curate_pairs(rows: list[dict], min_gap: float) -> list[dict]:
    """Phase-2 pairs: per prompt, the highest-scored answer vs the lowest-scored one.

    Every answer a prompt's pairs mention is a candidate with its score (``chosen_score`` /
    ``rejected_score``; a row without scores counts as chosen = 1, rejected = 0, i.e. a plain
    preference label). The choice is online DPO's pair rule (:func:`alignment.train.pair_rule.select_pair`,
    ``best_worst`` on the scores alone), so ties and gaps are decided in one place: the best answer is
    paired with the worst, and the prompt is dropped when ``best - worst < min_gap`` (a small gap is
    mostly label noise, as the Yi-Lightning report argues), when the gap is 0 (a tie) or when the
    prompt has one answer only. Among equal scores the answer seen first wins.

    Args:
        rows (`list[dict]`): normalized pairs.
        min_gap (`float`): smallest score gap kept.

    Returns:
        `list[dict]`: one pair per kept prompt, in first-seen prompt order, with ``margin`` unset.
    """
    from alignment.train.pair_rule import Candidate, Pair, PairRule, select_pair

    rule = PairRule(rule="best_worst", min_gap=min_gap, verifier="ignore")
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(prompt_key(r["prompt"]), {"prompt": r["prompt"], "cands": {}, "source": r["source"]})
        cs = 1.0 if r["chosen_score"] is None else r["chosen_score"]
        rs = 0.0 if r["rejected_score"] is None else r["rejected_score"]
        # an answer seen in several pairs keeps its best-known score (scores of one answer should agree)
        for text, s in ((r["chosen"], cs), (r["rejected"], rs)):
            g["cands"][text] = max(s, g["cands"].get(text, s))
    out = []
    for key, g in groups.items():
        cands = [Candidate(text, score) for text, score in g["cands"].items()]
        try:
            pair = select_pair(cands, rule)
        except ValueError as e:  # a NaN or infinite score
            raise PairFormatError(f"prompt {prompt_text(g['prompt'])[:60]!r}: {e}") from None
        if isinstance(pair, Pair):
            out.append({"prompt": g["prompt"], "chosen": cands[pair.chosen].text, "rejected": cands[pair.rejected].text,
                        "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score, "source": g["source"]})
    return out


def split_by_prompt(rows: list[dict], eval_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split pairs into (train, held-out) by a hash of the prompt, so a prompt is on one side only.

    The split is deterministic given ``seed`` (same data, same split on every machine and resume).
    With at least two distinct prompts and ``eval_fraction > 0`` the held-out side is never empty.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")

    def unit(key: str) -> float:
        h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    keys = {prompt_key(r["prompt"]) for r in rows}
    held = {k for k in keys if unit(k) < eval_fraction}
    if eval_fraction > 0 and not held and len(keys) > 1:
        held = {min(keys, key=unit)}
    if keys and held == keys:  # never leave training empty
        held.discard(max(keys, key=unit))
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    evals = [r for r in rows if prompt_key(r["prompt"]) in held]
    return train, evals
