"""Reward model: Bradley-Terry training in two phases, batched scoring, ranking inspection.

    reward/pairs.py    load / validate / curate / split preference pairs (+ offline reference pairs)
    reward/train.py    one training phase through TRL's RewardTrainer (shared BT loss + MoE aux loss)
    reward/score.py    RewardScorer: batched scores for (prompt, response) lists (online DPO uses it)
    reward/inspect.py  rank candidates, summary figures, tables; reward/report.py: the HTML report
    reward/runner.py    the pipeline stage (recipes/stage/reward.yaml)
    reward/cli.py      `yialign-reward inspect ...` (also `python -m reward inspect ...`)

Tests: ``python -m pytest -q tests/reward``. Run the CLI as a module (``python -m reward``), never as
``python reward/cli.py``: the folder on ``sys.path`` would let ``reward/inspect.py`` shadow the
standard library's ``inspect``.
"""
