"""Inspect a reward model's rankings: which answers it prefers, where it disagrees with verifiers,
whether it just likes long answers.

    python -m reward inspect --model runs/tiny_cpu/reward/model --candidates cands.jsonl --out report/
    # (``yialign-reward inspect ...`` once installed; see reward/cli.py for every flag)

Candidates come from a JSONL file or are sampled with any Sampler (reward/cli.py). Accepted rows:

- a candidate: ``{"prompt", "response"}`` plus optional ``source``, ``passed`` (bool),
  ``verifier_score``, ``detail``, ``problem`` (a ``alignment.tasks.problems.Problem`` dict: the verifier is run
  on it when ``passed`` is not given);
- a preference pair: ``{"prompt", "chosen", "rejected", ...}`` (any layout reward/pairs.py reads, e.g.
  the synth stage's ``pairs.jsonl``): two candidates labelled ``chosen`` / ``rejected``.

Outputs of :func:`run_inspection` (all written atomically into ``out_dir``):
``scores.jsonl`` (one row per candidate: prompt, response, score, rank, verdict, lengths),
``summary.json``, ``table.txt`` (the per-prompt tables) and ``report.html`` (reward/report.py).

Summary figures: pairwise accuracy on labelled pairs (overall and per pair source); agreement with verifiers (over every
passed-vs-failed pair of one prompt, how often the passed answer scores higher; and the pass rate of
the RM's top choice vs a random choice); score distribution per source; length-vs-score correlation
(Pearson and Spearman, raw and with per-prompt means removed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from alignment.errors import MissingFileError
from reward.candidates import group_by_prompt, labelled_pairs, verifier_pairs
from reward.pairs import PairFormatError, normalize_pair, prompt_key, prompt_text
from reward.report import write_report

__all__ = ["load_candidates", "verify_candidates", "sample_candidates", "score_candidates", "summarize",
           "format_table", "format_summary", "run_inspection"]


# --------------------------------------------------------------------------- candidates


def _candidate(prompt, response: str, **extra: Any) -> dict:
    return {"prompt": prompt, "response": response, "source": extra.get("source") or "unknown",
            "passed": extra.get("passed"), "verifier_score": extra.get("verifier_score"),
            "detail": extra.get("detail"), "label": extra.get("label"), "pair": extra.get("pair"),
            "problem": extra.get("problem")}


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PairFormatError(f"{where}: key 'prompt' is empty")
        return
    if not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)):
        raise PairFormatError(f"{where}: key 'prompt' must be a string or a list of {{role, content}} messages "
                              f"(strings), got {type(prompt).__name__}")


def load_candidates(path: str | Path) -> list[dict]:
    """Read candidate rows and/or pair rows from a JSONL file (see the module docstring).

    Every problem is an :class:`alignment.errors.DataError` naming the file and line: invalid UTF-8 or
    JSON, a line over the row-size limit (``alignment.artifacts.max_row_bytes``), a missing key or a
    value of the wrong type."""
    from alignment.artifacts import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"candidates file {path} does not exist")
    out: list[dict] = []
    n_pairs = 0
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise PairFormatError(f"{where}: a row must be a JSON object")
        if "chosen" in row or "rejected" in row:
            p = normalize_pair(row, where, path.stem)
            for label in ("chosen", "rejected"):
                out.append(_candidate(p["prompt"], p[label], source=row.get("source") or label, label=label,
                                      pair=n_pairs, problem=_problem(row, where)))
            n_pairs += 1
            continue
        for key in ("prompt", "response"):
            if key not in row:
                raise PairFormatError(f"{where}: missing key '{key}' (a candidate row needs prompt and "
                                      f"response; a pair row needs chosen and rejected)")
        _check_prompt(row["prompt"], where)
        if not isinstance(row["response"], str):
            raise PairFormatError(f"{where}: key 'response' must be a string")
        if row.get("passed") is not None and not isinstance(row["passed"], bool):
            raise PairFormatError(f"{where}: key 'passed' must be true, false or null")
        if row.get("verifier_score") is not None and not isinstance(row["verifier_score"], (int, float)):
            raise PairFormatError(f"{where}: key 'verifier_score' must be a number or null")
        if row.get("source") is not None and not isinstance(row["source"], str):
            raise PairFormatError(f"{where}: key 'source' must be a string")
        out.append(_candidate(row["prompt"], row["response"], **{k: row.get(k) for k in (
            "source", "passed", "verifier_score", "detail")}, problem=_problem(row, where)))
    if not out:
        raise PairFormatError(f"{path}: no candidates")
    return out


def _problem(row: dict, where: str) -> dict | None:
    """The row's ``problem`` (a ``alignment.tasks.problems.Problem`` dict), checked so the verifier can use it."""
    problem = row.get("problem")
    if problem is None:
        return None
    if not isinstance(problem, dict):
        raise PairFormatError(f"{where}: key 'problem' must be an object (a synth problem) or null")
    from alignment.tasks.problems import Problem

    try:
        Problem.from_dict(problem)
    except (TypeError, KeyError, ValueError) as e:
        raise PairFormatError(f"{where}: key 'problem' is not a synth problem ({e})") from None
    return problem


def verify_candidates(cands: list[dict]) -> int:
    """Run the synth verifier on candidates that carry a ``problem`` but no verdict; returns how many.

    An infrastructure fault (``Verdict.error_kind`` set) leaves ``passed`` unknown rather than false.
    """
    todo = [c for c in cands if c["passed"] is None and c["problem"] is not None]
    if not todo:
        return 0
    from alignment.tasks.problems import Problem
    from alignment.tasks.verify import get_verifier

    verifiers: dict[str, Any] = {}
    for c in tqdm(todo, desc="verifying", disable=len(todo) < 32):
        problem = c["problem"] if isinstance(c["problem"], Problem) else Problem.from_dict(c["problem"])
        v = verifiers.setdefault(problem.kind, get_verifier(problem.kind))
        verdict = v.verify(problem, c["response"])
        c["detail"] = verdict.detail
        if verdict.error_kind is None:
            c["passed"], c["verifier_score"] = verdict.passed, verdict.score
    return len(todo)


def sample_candidates(sampler, prompts: Sequence, n: int, params, problems: Sequence | None = None,
                      source: str = "sampled") -> list[dict]:
    """``n`` samples per prompt from any :class:`alignment.sampling.Sampler`, as candidate rows.

    ``problems[i]`` (a ``alignment.tasks.problems.Problem``), when given, is attached to prompt i's candidates so
    :func:`verify_candidates` can judge them.
    """
    groups = sampler.generate(list(prompts), n, params)
    out = []
    for i, (prompt, samples) in enumerate(zip(prompts, groups)):
        prob = problems[i].to_dict() if problems is not None and problems[i] is not None else None
        for s in samples:
            out.append(_candidate(prompt, s.text, source=source, problem=prob))
    return out


# --------------------------------------------------------------------------- scoring


def score_candidates(scorer, cands: list[dict]) -> list[dict]:
    """Add ``score``, ``rank`` (1 = the RM's favourite within its prompt), ``n_tokens`` and ``n_chars``."""
    from reward.score import encode_conversation

    ids = [encode_conversation(scorer.tokenizer, c["prompt"], c["response"]) for c in cands]
    prompt_lens = {}
    scores = []
    bs = scorer.batch_size * 8
    for start in tqdm(range(0, len(ids), bs), desc="scoring", disable=len(ids) <= bs):
        scores.extend(scorer.score_ids(ids[start:start + bs]))
    for c, s, x in zip(cands, scores, ids):
        key = prompt_key(c["prompt"])
        if key not in prompt_lens:
            prompt_lens[key] = len(encode_conversation(scorer.tokenizer, c["prompt"], ""))
        c["score"] = float(s)
        c["n_chars"] = len(c["response"])
        c["n_tokens"] = max(len(x) - prompt_lens[key], 0)  # response tokens (template overhead excluded)
    for group in group_by_prompt(cands).values():
        for r, c in enumerate(sorted(group, key=lambda c: -c["score"]), 1):
            c["rank"] = r
    return cands


# --------------------------------------------------------------------------- summary


def _mean(x: Sequence[float]) -> float:
    return sum(x) / len(x) if x else float("nan")


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if len(x) < 3:
        return float("nan")
    mx, my = _mean(x), _mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _ranks(x: Sequence[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def summarize(cands: list[dict]) -> dict[str, Any]:
    """The inspection summary (see the module docstring); NaN where a figure has no data."""
    groups = group_by_prompt(cands)
    pairs = labelled_pairs(cands)
    vpairs = verifier_pairs(cands)
    judged_groups = [g for g in groups.values() if any(c["passed"] is not None for c in g)]
    # the RM's favourite among the judged candidates (unjudged ones cannot pass or fail)
    top1 = [min((c for c in g if c["passed"] is not None), key=lambda c: c["rank"])["passed"] for g in judged_groups]
    rand = [_mean([c["passed"] is True for c in g if c["passed"] is not None]) for g in judged_groups]
    scores = [c["score"] for c in cands]
    lengths = [float(c["n_tokens"]) for c in cands]
    # length effect within a prompt: remove each prompt's mean score and mean length first
    centred_s, centred_l = [], []
    for g in groups.values():
        ms, ml = _mean([c["score"] for c in g]), _mean([float(c["n_tokens"]) for c in g])
        centred_s += [c["score"] - ms for c in g]
        centred_l += [c["n_tokens"] - ml for c in g]
    by_source: dict[str, dict[str, float]] = {}
    for src in sorted({c["source"] for c in cands}):
        s = [c["score"] for c in cands if c["source"] == src]
        m = _mean(s)
        by_source[src] = {"n": len(s), "mean": m, "std": math.sqrt(_mean([(v - m) ** 2 for v in s])),
                          "min": min(s), "max": max(s)}
    pairs_by_source: dict[str, list[tuple[dict, dict]]] = {}
    for c, r in pairs:  # a pair row's source (e.g. the reward stage's on-policy pairs) rides on its chosen side
        pairs_by_source.setdefault(c["source"], []).append((c, r))
    return {
        "prompts": len(groups),
        "candidates": len(cands),
        "pairs": len(pairs),
        "pairwise_acc": _mean([c["score"] > r["score"] for c, r in pairs]),
        "pairwise_acc_by_source": {src: {"pairs": len(ps), "acc": _mean([c["score"] > r["score"] for c, r in ps])}
                                   for src, ps in sorted(pairs_by_source.items())},
        "mean_margin": _mean([c["score"] - r["score"] for c, r in pairs]),
        "verifier_pairs": len(vpairs),
        "verifier_agreement": _mean([g["score"] > b["score"] for g, b in vpairs]),
        "judged_prompts": len(judged_groups),
        "top1_pass_rate": _mean(top1),
        "random_pass_rate": _mean(rand),
        "length_pearson": _pearson(lengths, scores),
        "length_spearman": _pearson(_ranks(lengths), _ranks(scores)),
        "length_pearson_within_prompt": _pearson(centred_l, centred_s),
        "score_mean": _mean(scores),
        "score_std": math.sqrt(_mean([(v - _mean(scores)) ** 2 for v in scores])),
        "by_source": by_source,
    }


# --------------------------------------------------------------------------- text output


def _verdict(c: dict) -> str:
    return "-" if c["passed"] is None else ("PASS" if c["passed"] else "FAIL")


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def format_table(cands: list[dict], max_prompts: int | None = None, width: int = 60) -> str:
    """Per prompt: rank, score, verifier verdict, pair label, source and the start of each response."""
    lines = []
    for i, group in enumerate(group_by_prompt(cands).values()):
        if max_prompts is not None and i >= max_prompts:
            lines.append(f"... {len(group_by_prompt(cands)) - max_prompts} more prompts (see scores.jsonl)")
            break
        lines.append(f"prompt {i + 1}: {_clip(prompt_text(group[0]['prompt']), 100)}")
        lines.append(f"  {'rank':>4}  {'score':>8}  {'verdict':<7}  {'label':<8}  {'source':<12}  response")
        for c in sorted(group, key=lambda c: c["rank"]):
            lines.append(f"  {c['rank']:>4}  {c['score']:>8.3f}  {_verdict(c):<7}  {c['label'] or '-':<8}  "
                         f"{_clip(c['source'], 12):<12}  {_clip(c['response'], width)}")
        lines.append("")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"prompts {s['prompts']}, candidates {s['candidates']}",
        f"pairwise accuracy      {_fmt(s['pairwise_acc'])}  over {s['pairs']} labelled pairs "
        f"(mean margin {_fmt(s['mean_margin'])})",
        f"verifier agreement     {_fmt(s['verifier_agreement'])}  over {s['verifier_pairs']} passed-vs-failed pairs",
        f"top-1 pass rate        {_fmt(s['top1_pass_rate'])}  vs random pick {_fmt(s['random_pass_rate'])} "
        f"({s['judged_prompts']} prompts with verdicts)",
        f"length vs score        pearson {_fmt(s['length_pearson'])}, spearman {_fmt(s['length_spearman'])}, "
        f"within-prompt pearson {_fmt(s['length_pearson_within_prompt'])}",
        "score by source:",
    ]
    for src, d in s["by_source"].items():
        lines.append(f"  {src:<16} n={d['n']:<5} mean {d['mean']:.3f}  std {d['std']:.3f}  "
                     f"[{d['min']:.3f}, {d['max']:.3f}]")
    return "\n".join(lines)


# --------------------------------------------------------------------------- all together


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def run_inspection(scorer, cands: list[dict], out_dir: str | Path, title: str = "Reward model inspection",
                   max_table_prompts: int = 50) -> dict[str, Any]:
    """Score, rank and summarize ``cands``; write scores.jsonl, summary.json, table.txt, report.html."""
    from alignment.artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_text

    out_dir = Path(out_dir)
    verify_candidates(cands)
    score_candidates(scorer, cands)
    summary = summarize(cands)
    table = format_table(cands, max_prompts=max_table_prompts)
    rows = [{"prompt": c["prompt"], "response": c["response"], "score": c["score"], "rank": c["rank"],
             "source": c["source"], "label": c["label"], "pair": c["pair"], "passed": c["passed"],
             "verifier_score": c["verifier_score"], "detail": c["detail"], "n_tokens": c["n_tokens"],
             "n_chars": c["n_chars"]} for c in cands]
    atomic_write_jsonl(out_dir / "scores.jsonl", rows)
    atomic_write_json(out_dir / "summary.json", _json_safe(summary))
    atomic_write_text(out_dir / "table.txt", format_summary(summary) + "\n\n" + table + "\n")
    write_report(out_dir / "report.html", cands, summary, title=title, max_prompts=max_table_prompts)
    return summary
