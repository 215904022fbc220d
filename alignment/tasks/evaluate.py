"""The ``eval`` stage: held-out verified accuracy of one or more checkpoints.

Math: greedy accuracy on unseen instances of the trained task families (``train_heldout``: new
numbers in trained templates), on held-out families (``heldout``: templates never trained on,
transfer) and on regression sets (ASDiv, HumanEval). Code: HumanEval pass@1 (greedy) and pass@k
(``num_samples`` samples at ``temperature``, unbiased estimator of Chen et al. 2021), tests run in
the sandbox; a math set samples too when its ``num_samples`` is set. Only held-out or eval-only
splits are accepted here.

Pipeline use (recipes/stage/eval.yaml)::

    stage:
      eval:
        _target_: alignment.tasks.evaluate.run
        inputs: {sft_broad: sft_broad, sft_hard: sft_hard, dpo_r2: dpo_r2}   # every checkpoint
        sampler: ${sampler}

Every input with a model is evaluated (``models`` narrows the list); metrics are flat,
``<input>/<set>/<metric>`` (e.g. ``sft_hard/humaneval/pass@1``), each greedy accuracy with its 95%
Wilson interval (``acc_lo``/``acc_hi``) and format compliance (``format``: the share of responses
whose answer or code the verifier could read), and, with several checkpoints, each one against the
one before it in pipeline order on the same problems: ``delta`` and McNemar's exact ``p_mcnemar``
(alignment/stats.py). A math set also reports ``wrong_step_share``: the share of its right greedy
answers that state wrong arithmetic on the way (``alignment.tasks.verify.math.first_wrong_step``). Standalone:
``yialign-synth --config-name eval_checkpoint inputs.policy=/path/to/model``.
Writes ``report.json`` (metrics + per-set counts) and ``samples.jsonl`` (every response
with its verdict).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from alignment.artifacts import atomic_write_json, atomic_write_jsonl
from alignment.errors import ConfigError
from alignment.sampling.base import SamplingParams, close_sampler
from alignment.stage_contract import StageContext, StageResult
from alignment.stats import accuracy_ci, mcnemar
from alignment.tasks.format import plain_render
from alignment.tasks.problems import Problem, load_problems


@dataclass
class EvalSetSpec:
    """One eval set.

    Args:
        source (`str`): ``gsm_symbolic``, ``templates``, ``codeio`` (held-out split), ``asdiv``, ``humaneval``.
        split (`str`): ``train_heldout``, ``heldout`` or ``test`` (``train`` is refused).
        n (`int | None`, *optional*): problems (None = the whole finite set).
        seed (`int`, *optional*, defaults to `1234`): sampling seed of procedural sets.
        name (`str`, *optional*): metric prefix; defaults to ``<source>_<split>``.
        num_samples (`int | None`, *optional*): samples per problem for pass@k; None = the stage's
            ``num_samples`` for code sets and 0 (greedy only) for math sets.
        max_new_tokens (`int | None`, *optional*): response length for this set; None = the stage's. A
            decode batch runs until its longest row stops, so a set of short answers (our templates)
            need not pay for the longest set's budget.
    """

    source: str = MISSING
    split: str = MISSING
    n: int | None = None
    seed: int = 1234
    name: str = ""
    num_samples: int | None = None
    max_new_tokens: int | None = None

    @property
    def label(self) -> str:
        """The set's metric prefix: ``name``, else ``<source>_<split>``."""
        return self.name or f"{self.source}_{self.split}"


@dataclass
class EvalConfig:
    """Schema of ``stage.eval``.

    Args:
        sets (`list[EvalSetSpec]`): what to evaluate.
        sampler (`dict`, *optional*): the ``sampler`` group for ``build_sampler``.
        models (`list[str]`, *optional*): input names to evaluate; empty = every input.
        max_new_tokens (`int`, *optional*, defaults to `512`): per response.
        num_samples (`int`, *optional*, defaults to `10`): samples per code problem for pass@k (a set's own
            ``num_samples`` overrides it, math sets included; a math set without one is greedy only).
        pass_k (`list[int]`, *optional*, defaults to `[1, 10]`): k values reported from the samples.
        temperature (`float`, *optional*, defaults to `0.8`): sampling temperature for pass@k.
        top_p (`float`, *optional*, defaults to `0.95`): nucleus mass for pass@k.
        code_timeout_s (`float`, *optional*, defaults to `5.0`): sandbox wall limit per test run.
        verify_workers (`int`, *optional*, defaults to `2`): concurrent sandboxes.
        seed (`int`, *optional*, defaults to `0`): sampling seed.
        device (`str`, *optional*, defaults to `""`): empty = the pipeline's device.
        compare_to (`str`, *optional*): an input name; every other checkpoint's paired test is against
            it (a sweep of candidates from one baseline). ``None``: each against the one before it
            (a chain of stages).
    """

    sets: list[EvalSetSpec] = MISSING
    sampler: dict[str, Any] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    max_new_tokens: int = 512
    num_samples: int = 10
    pass_k: list[int] = field(default_factory=lambda: [1, 10])
    temperature: float = 0.8
    top_p: float = 0.95
    code_timeout_s: float = 5.0
    verify_workers: int = 2
    seed: int = 0
    device: str = ""
    compare_to: str | None = None


FINAL_VS_FIRST = "vs_first_"  # metric key part of the last checkpoint's paired test against the first


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def load_eval_sets(specs: list[EvalSetSpec]) -> list[tuple[str, list[Problem]]]:
    out = []
    for i, spec in enumerate(specs):
        if spec.split == "train":
            raise ConfigError(f"sets[{i}]: eval uses held-out or test splits only, got {spec.source}/train "
                              f"(unseen instances of the trained families: split train_heldout)")
        out.append((spec.label, load_problems(spec.source, spec.split, spec.n, spec.seed)))
    return out


def set_samples(spec: EvalSetSpec | None, kind: str, cfg: "EvalConfig") -> int:
    """Samples per problem for a set's pass@k (see ``EvalSetSpec.num_samples``)."""
    if spec is not None and spec.num_samples is not None:
        return spec.num_samples
    return cfg.num_samples if kind == "code" else 0


def _verify_all(problems: list[Problem], responses: list[str], verifiers: dict, workers: int):
    if problems and problems[0].kind == "code":
        return verifiers["code"].verify_many(problems, responses, workers=workers)
    return [verifiers["math"].verify(p, r) for p, r in zip(problems, responses)]


def evaluate_sampler(sampler, render, sets: list[tuple[str, list[Problem]]], cfg: EvalConfig, prefix: str = "") -> tuple[dict[str, Any], list[dict]]:
    """Evaluate one policy on every set; returns (flat metrics, per-response rows)."""
    decoded, sample_s = decode_sets(sampler, render, sets, cfg)
    return judge_sets(decoded, cfg, prefix, sample_s)


@dataclass
class DecodedSet:
    """One set's problems and one checkpoint's responses to them (see :func:`decode_sets`)."""

    name: str
    problems: list[Problem]
    greedy: list[str]
    sampled: list[list[str]] | None  # per problem, its samples; None = greedy only


def decode_sets(sampler, render, sets: list[tuple[str, list[Problem]]], cfg: EvalConfig) -> tuple[list[DecodedSet], float]:
    """Every response one policy gives on the sets (greedy, and sampled where a set asks for samples),
    and the seconds that took."""
    specs = {sp.label: sp for sp in cfg.sets}  # a set's own sample count and budget
    todo = []  # (name, problems, prompts, samples per problem, max new tokens) of each non-empty set
    for name, problems in sets:
        if problems:
            spec = specs.get(name)
            max_new = spec.max_new_tokens if spec is not None and spec.max_new_tokens is not None else cfg.max_new_tokens
            todo.append((name, problems, [render(p) for p in problems], set_samples(spec, problems[0].kind, cfg), max_new))
    # Decode first, every set with the same budget in one call: at these batch sizes a decode step is
    # launch-bound, so a 164-problem set decoded alone costs about what a full batch of 1,024 rows does.
    t0 = time.perf_counter()
    greedy_all = generate_grouped(sampler, [
        (prompts, 1, SamplingParams(max_new_tokens=max_new, temperature=0.0, seed=cfg.seed))
        for _, _, prompts, _, max_new in todo])
    sampled_all = iter(generate_grouped(sampler, [
        (prompts, n, SamplingParams(max_new_tokens=max_new, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed))
        for _, _, prompts, n, max_new in todo if n > 0]))
    out = [DecodedSet(name, problems, [g[0].text for g in greedy],
                      [[x.text for x in s] for s in next(sampled_all)] if n_samples > 0 else None)
           for (name, problems, _, n_samples, _), greedy in zip(todo, greedy_all)]
    return out, time.perf_counter() - t0


def judge_sets(decoded: list[DecodedSet], cfg: EvalConfig, prefix: str = "", sample_s: float = 0.0
               ) -> tuple[dict[str, Any], list[dict]]:
    """Verify one checkpoint's responses (:func:`decode_sets`, which took ``sample_s``); returns (flat
    metrics, per-response rows). Needs no model: the eval stage runs it for one checkpoint while the
    next one decodes."""
    from tqdm import tqdm

    from alignment.tasks.verify import get_verifier
    from alignment.tasks.verify.math import first_wrong_step

    verifiers = {"math": get_verifier("math"), "code": get_verifier("code", timeout_s=cfg.code_timeout_s)}
    metrics: dict[str, Any] = {}
    rows: list[dict] = []
    timing = {"sample_s": sample_s, "verify_s": 0.0}  # where the stage's time goes, per checkpoint

    @contextmanager
    def timed(key: str):
        t0 = time.perf_counter()
        yield
        timing[key] += time.perf_counter() - t0

    for d in tqdm(decoded, desc=f"verify {prefix or 'policy'}", unit="set"):
        name, problems, texts = d.name, d.problems, d.greedy
        key = f"{prefix}/{name}" if prefix else name
        with timed("verify_s"):
            verdicts = _verify_all(problems, texts, verifiers, cfg.verify_workers)
        judged = [v for v in verdicts if v.error_kind is None]
        acc = sum(v.passed for v in judged) / len(judged) if judged else 0.0
        metric = "pass@1" if problems[0].kind == "code" else "acc"
        metrics[f"{key}/{metric}"] = round(acc, 6)
        lo, hi = accuracy_ci(sum(v.passed for v in judged), len(judged))
        metrics[f"{key}/{metric}_lo"], metrics[f"{key}/{metric}_hi"] = round(lo, 4), round(hi, 4)
        metrics[f"{key}/format"] = round(sum(v.formatted for v in judged) / len(judged), 6) if judged else 0.0
        metrics[f"{key}/n"] = len(judged)
        if problems[0].kind == "math":
            # right final answers reached through a wrong arithmetic step ("89 - 17 = 76", then a lucky
            # "#### 5"): counted right here, as every math eval does, and refused as training data
            right = [t for t, v in zip(texts, verdicts) if v.error_kind is None and v.passed]
            metrics[f"{key}/wrong_step_share"] = round(sum(first_wrong_step(t) is not None for t in right) / len(right), 6) if right else 0.0
        if len(judged) < len(verdicts):
            metrics[f"{key}/infra_faults"] = len(verdicts) - len(judged)
        for p, t, v in zip(problems, texts, verdicts):
            rows.append({"model": prefix, "set": name, "problem_id": p.id, "mode": "greedy", "response": t, **v.to_dict()})
        if d.sampled is not None:
            flat_p = [p for p, s in zip(problems, d.sampled) for _ in s]
            flat_t = [t for s in d.sampled for t in s]
            with timed("verify_s"):
                flat_v = _verify_all(flat_p, flat_t, verifiers, cfg.verify_workers)
            per = {}
            for p, v in zip(flat_p, flat_v):
                if v.error_kind is None:
                    n, c = per.get(p.id, (0, 0))
                    per[p.id] = (n + 1, c + int(v.passed))
            for k in cfg.pass_k:
                vals = [pass_at_k(n, c, k) for n, c in per.values() if n >= k]
                if vals:
                    metrics[f"{key}/pass@{k}_sampled"] = round(sum(vals) / len(vals), 6)
            for p, t, v in zip(flat_p, flat_t, flat_v):
                rows.append({"model": prefix, "set": name, "problem_id": p.id, "mode": "sampled", "response": t, **v.to_dict()})
    for k, v in timing.items():
        metrics[f"{prefix}/{k}" if prefix else k] = round(v, 2)
    return metrics, rows


def generate_grouped(sampler, requests: list[tuple[list, int, SamplingParams]]) -> list[list[list]]:
    """``sampler.generate(prompts, n, params)`` for each request, one call per distinct ``(n, params)``
    over the requests' prompts together; results come back per request, in order."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, n, params) in enumerate(requests):
        groups.setdefault((n, repr(params)), []).append(i)
    out: list = [None] * len(requests)
    for idx in groups.values():
        prompts = [p for i in idx for p in requests[i][0]]
        n, params = requests[idx[0]][1], requests[idx[0]][2]
        result = sampler.generate(prompts, n, params) if prompts else []
        start = 0
        for i in idx:
            out[i] = result[start:start + len(requests[i][0])]
            start += len(requests[i][0])
    return out


def _in_pipeline_order(ctx: StageContext) -> list[str]:
    """The inputs in the order their stages run (the paired tests compare each with the one before);
    a recipe's ``inputs`` mapping merges its defaults first, so its own order is not the chain's."""
    names = list(ctx.inputs)
    try:
        order = list(ctx.root.pipeline.order)
    except AttributeError:
        return names
    rank = {stage: i for i, stage in enumerate(order)}
    return sorted(names, key=lambda n: rank.get(Path(ctx.inputs[n].dir).name, len(order)))


def paired_comparisons(rows: list[dict], names: list[str], baseline: str | None = None,
                       pairs: list[tuple[str, str]] | None = None, key: str = "") -> dict[str, Any]:
    """Each checkpoint against the one before it in ``names`` (or against ``baseline``, when given, or
    the explicit ``(before, after)`` ``pairs``), per set, on the greedy verdicts of the
    problems both could be judged on: ``<name>/<set>/<key>delta`` (accuracy gained, in [-1, 1]) and
    ``<name>/<set>/<key>p_mcnemar`` (McNemar's exact two-sided p-value; the stages' claim to a gain), and the
    same for format compliance (``format_delta``, ``format_p_mcnemar``: what a small model moves first)."""
    verdicts: dict[tuple[str, str], dict[str, tuple[bool, bool]]] = {}
    for r in rows:
        if r["mode"] == "greedy" and r["error_kind"] is None:
            verdicts.setdefault((r["model"], r["set"]), {})[r["problem_id"]] = (bool(r["passed"]), bool(r.get("formatted", True)))
    out: dict[str, Any] = {}
    if pairs is None:
        pairs = [(baseline, n) for n in names if n != baseline] if baseline else list(zip(names, names[1:]))
    for prev, cur in pairs:
        for (model, set_name), after in verdicts.items():
            if model != cur or (prev, set_name) not in verdicts:
                continue
            before = verdicts[(prev, set_name)]
            ids = sorted(set(before) & set(after))
            for col, prefix in ((0, ""), (1, "format_")):
                res = mcnemar([before[i][col] for i in ids], [after[i][col] for i in ids])
                out[f"{cur}/{set_name}/{key}{prefix}delta"] = round(res.delta, 6)
                out[f"{cur}/{set_name}/{key}{prefix}p_mcnemar"] = round(res.p_value, 6)
    return out


def _build_policy(model_path: str, cfg: EvalConfig, device: str):
    from transformers import AutoTokenizer

    import alignment.model  # noqa: F401  (registers yi_lightning; see synth/runner.py PolicySpec.build)

    from alignment.checkpoints import check_model_dir
    from alignment.sampling import build_sampler
    from alignment.tasks.format import chat_render

    check_model_dir(model_path, "eval model")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sampler = build_sampler(dict(cfg.sampler), model_path, tokenizer=tokenizer, device=device)
    return sampler, chat_render(tokenizer) if tokenizer.chat_template else plain_render


def run(cfg: EvalConfig, ctx: StageContext) -> StageResult:
    """Stage runner: evaluates every input checkpoint (or those named in ``cfg.models``)."""
    names = list(cfg.models) or _in_pipeline_order(ctx)
    if not names:
        raise ConfigError(f"stage {ctx.name}: no checkpoints to evaluate (give inputs, e.g. inputs: {{policy: sft_hard}})")
    if cfg.compare_to is not None:
        if cfg.compare_to not in names:
            raise ConfigError(f"stage {ctx.name}: compare_to '{cfg.compare_to}' is not one of the checkpoints evaluated {names}")
        names = [cfg.compare_to] + [n for n in names if n != cfg.compare_to]
    sets = load_eval_sets(list(cfg.sets))
    metrics: dict[str, Any] = {}
    rows: list[dict] = []
    single = len(names) == 1
    # One checkpoint's responses are verified (the code sandboxes: seconds per checkpoint) in a
    # worker thread while the next checkpoint loads and decodes; results are collected in order.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-verify") as pool:
        judging = []
        for name in names:
            model_path = str(ctx.input(name, "model"))
            sampler, render = _build_policy(model_path, cfg, cfg.device or ctx.device)
            try:
                decoded, sample_s = decode_sets(sampler, render, sets, cfg)
            finally:
                close_sampler(sampler)  # a vLLM engine holds the card until closed; the next checkpoint needs it
            del sampler
            judging.append(pool.submit(judge_sets, decoded, cfg, "" if single else name, sample_s))
        for future in judging:
            m, r = future.result()
            metrics.update(m)
            rows.extend(r)
    if not single:
        metrics.update(paired_comparisons(rows, names, cfg.compare_to))
        if cfg.compare_to is None and len(names) > 2:
            # a chain's end against its start: "not worse than base" on the held-out families and
            # regression sets is this test, not the sum of the stage-by-stage ones
            metrics.update(paired_comparisons(rows, names, pairs=[(names[0], names[-1])], key=FINAL_VS_FIRST))
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(ctx.stage_dir) / "report.json", {"models": names, "compare_to": cfg.compare_to, "metrics": metrics,
                                                            "sets": {n: len(p) for n, p in sets}})
    atomic_write_jsonl(Path(ctx.stage_dir) / "samples.jsonl", rows)
    return StageResult(outputs={"report": "report.json", "samples": "samples.jsonl"}, metrics=metrics)
