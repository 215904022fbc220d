"""``yialign-reward``: train a reward model or inspect its rankings (entry point ``reward.cli:main``).

Run as (``python -m reward ...`` works the same before the console script is installed)::

    # train: the recipe's reward stage alone (inputs from runs/<run_name>, or explicit paths)
    yialign-reward train run_name=tiny_cpu
    yialign-reward train stage.reward.inputs.policy=PATH/model stage.reward.inputs.synth=PATH/pairs.jsonl

    # candidates from a file (candidate rows and/or pair rows, e.g. the synth stage's pairs.jsonl)
    yialign-reward inspect --model runs/tiny_cpu/reward/model \\
        --candidates runs/tiny_cpu/synth/pairs.jsonl --out runs/tiny_cpu/reward_inspect

    # 16 samples per held-out problem from a policy with any sampler backend, judged by the verifiers
    yialign-reward inspect --model runs/tiny_cpu/reward/model --policy runs/tiny_cpu/sft_hard/model \\
        --problems templates:heldout --limit 20 --n 16 --sampler native --out /tmp/inspect

    # prompts from a JSONL file ({"prompt": ..., "problem": {...optional}} rows)
    yialign-reward inspect --model RM --policy POLICY --prompts prompts.jsonl --sampler hf

It prints the summary and the per-prompt tables, and writes ``scores.jsonl``, ``summary.json``,
``table.txt`` and ``report.html`` into ``--out`` (reward/inspect.py, reward/report.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignment.paths import RECIPES_DIR

RECIPES = RECIPES_DIR  # recipes/ of the checkout or of the installed wheel (alignment.paths)


def _parser() -> argparse.ArgumentParser:
    from alignment.artifacts import DEFAULT_MAX_ROW_BYTES

    p = argparse.ArgumentParser(prog="yialign-reward", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the reward model: the pipeline's reward stage (two phases)")
    tr.add_argument("overrides", nargs="*", help="Hydra overrides, as for yialign (e.g. run_name=exp1 "
                    "stage.reward.finetune.min_gap=1.0); inputs come from that run or explicit paths")
    ins = sub.add_parser("inspect", help="rank candidates with a reward model; summary, tables, HTML report")
    ins.add_argument("--model", required=True, help="reward model folder (save_pretrained, e.g. the reward stage's model)")
    src = ins.add_mutually_exclusive_group(required=True)
    src.add_argument("--candidates", help="JSONL of candidate rows and/or preference pair rows")
    src.add_argument("--prompts", help="JSONL of {prompt, problem?} rows to sample candidates for")
    src.add_argument("--problems", help="SOURCE[:SPLIT] of alignment.tasks.problems (e.g. templates:heldout) to sample for")
    ins.add_argument("--policy", help="policy checkpoint that samples candidates (with --prompts/--problems)")
    ins.add_argument("--sampler", default="native",
                     help="sampler backend name (recipes/sampler/<name>.yaml) or a YAML file (default: native)")
    ins.add_argument("--n", type=int, default=16, help="samples per prompt (default: 16)")
    ins.add_argument("--max-new-tokens", type=int, default=256)
    ins.add_argument("--temperature", type=float, default=1.0)
    ins.add_argument("--limit", type=int, default=None, help="use only the first N prompts / problems")
    ins.add_argument("--out", default="reward_inspect", help="output folder (default: ./reward_inspect)")
    ins.add_argument("--device", default="cpu")
    ins.add_argument("--batch-size", type=int, default=16, help="sequences per scoring forward pass")
    ins.add_argument("--max-length", type=int, default=4096, help="longer sequences keep their last tokens")
    ins.add_argument("--show", type=int, default=10, help="prompts printed as tables (all go to table.txt)")
    ins.add_argument("--seed", type=int, default=0)
    ins.add_argument("--max-row-bytes", type=int, default=DEFAULT_MAX_ROW_BYTES,
                     help=f"longest JSONL line accepted, in bytes (default: {DEFAULT_MAX_ROW_BYTES})")
    return p


def _check_args(args) -> None:
    """Sizes and counts must be positive: a clear error now, not a crash after loading the model."""
    from alignment.errors import UserError

    for flag in ("n", "max_new_tokens", "limit", "batch_size", "max_length", "max_row_bytes"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UserError(f"--{flag.replace('_', '-')}={value}: must be > 0")
    if args.temperature < 0 or args.show < 0 or args.seed < 0:
        bad = next(f for f in ("temperature", "show", "seed") if getattr(args, f) < 0)
        raise UserError(f"--{bad}={getattr(args, bad)}: must be >= 0")


def _sampled_candidates(args) -> list[dict]:
    from omegaconf import OmegaConf

    from alignment.errors import DataError, UserError
    from alignment.sampling import SamplingParams, build_sampler
    from reward.inspect import sample_candidates

    if not args.policy:
        raise UserError("--prompts/--problems need --policy (the checkpoint that samples the candidates)")
    problems = None
    if args.problems:
        from alignment.tasks.problems import load_problems

        source, _, split = args.problems.partition(":")
        problems = load_problems(source, split or "heldout", n=args.limit, seed=args.seed)
        prompts = [p.prompt for p in problems]
    else:
        from alignment.tasks.problems import Problem

        from alignment.artifacts import iter_jsonl
        from reward.inspect import _check_prompt, _problem

        prompts, problems = [], []
        for where, row in iter_jsonl(args.prompts):
            if not isinstance(row, dict) or "prompt" not in row:
                raise DataError(f"{where}: missing key 'prompt' (a row is {{\"prompt\": ..., \"problem\": ...}})")
            _check_prompt(row["prompt"], where)
            prompts.append(row["prompt"])
            problem = _problem(row, where)
            problems.append(Problem.from_dict(problem) if problem else None)
            if args.limit is not None and len(prompts) >= args.limit:
                break
        if not prompts:
            raise DataError(f"{args.prompts}: no prompts")
        if not any(problems):
            problems = None
    yaml_path = Path(args.sampler) if args.sampler.endswith((".yaml", ".yml")) else RECIPES / "sampler" / f"{args.sampler}.yaml"
    if not yaml_path.is_file():
        raise UserError(f"--sampler: no sampler recipe {yaml_path}")
    sampler = build_sampler(OmegaConf.load(yaml_path), args.policy, device=args.device)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    return sample_candidates(sampler, prompts, args.n, params, problems=problems,
                              source=f"{Path(args.policy).parent.name}/{Path(args.policy).name}")


def inspect_command(args) -> dict:
    from reward.inspect import format_summary, format_table, load_candidates, run_inspection
    from reward.score import RewardScorer

    cands = load_candidates(args.candidates) if args.candidates else _sampled_candidates(args)
    if args.candidates and args.limit is not None:
        keep = list(dict.fromkeys(json.dumps(c["prompt"], sort_keys=True) for c in cands))[:args.limit]
        cands = [c for c in cands if json.dumps(c["prompt"], sort_keys=True) in set(keep)]
    scorer = RewardScorer.from_pretrained(args.model, device=args.device, batch_size=args.batch_size,
                                          max_length=args.max_length)
    summary = run_inspection(scorer, cands, args.out, title=f"Reward model {args.model}")
    print(format_summary(summary))
    print()
    print(format_table(cands, max_prompts=args.show))
    out = Path(args.out)
    print(f"wrote {out / 'report.html'}, {out / 'scores.jsonl'}, {out / 'summary.json'}, {out / 'table.txt'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    from alignment.errors import UserError, one_line

    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            # the reward stage of the recipe, run alone: same schema, resume and manifest as in the chain
            from alignment.pipeline import main as pipeline_main

            return pipeline_main(["stages=[reward]", *args.overrides])
        if args.command == "inspect":
            from alignment.artifacts import row_limit

            _check_args(args)
            with row_limit(args.max_row_bytes):
                inspect_command(args)
    except (UserError, FileNotFoundError, ValueError) as e:  # bad input: one clear line, no traceback
        print(f"yialign-reward: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
