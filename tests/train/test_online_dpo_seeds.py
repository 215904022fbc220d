"""Per-prompt seeding of online DPO's sampling (alignment/train/online_dpo/shard.py), in one process:
a prompt seeded on its own draws the same samples whatever prompts share the call, which is what lets
N ranks reproduce one process; one seeded call over all prompts (the 1-process default) does not.

Run: python -m pytest -q tests/train/test_online_dpo_seeds.py
"""

from __future__ import annotations

import pytest

from alignment.sampling import SamplerConfig, SamplingParams, build_sampler
from alignment.train.online_dpo import PromptItem, Shard, prompt_seed
from alignment.train.online_dpo.rollout import generate_candidates


def _items(*texts):
    return [PromptItem(id=t, prompt=[{"role": "user", "content": t}]) for t in texts]


def _tokens(groups):
    return [[s.token_ids for s in g] for g in groups]


def test_a_prompt_seeded_alone_ignores_its_batch_mates(tiny_model, tiny_tokenizer):
    sampler = build_sampler(SamplerConfig(backend="native", max_prompts_per_batch=4), tiny_model, tiny_tokenizer)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=11)
    items = _items("What is 2 + 3?", "Say hello.", "Name a colour.")
    seeds = [prompt_seed(params.seed, i) for i in range(3)]
    together = _tokens(generate_candidates(sampler, items, 3, params, seeds))
    # rank 1 of 2 samples prompt 1 alone, with the seed of its pool index
    alone = _tokens(generate_candidates(sampler, items[1:2], 3, params, seeds[1:2]))
    assert alone == together[1:2]
    # one call over all prompts (no seeds) draws from one stream: prompt 1's samples move with its mates
    one_call = _tokens(generate_candidates(sampler, items, 3, params))
    mates = _tokens(generate_candidates(sampler, items[1:], 3, params))
    assert one_call[1] != mates[0]


def test_shard_strides_and_gathers_in_pool_order():
    assert Shard(0, 2).indices(5) == [0, 2, 4] and Shard(1, 2).indices(5) == [1, 3]
    assert Shard().gather_indexed([(1, "b"), (0, "a")], 2) == ["a", "b"]
    with pytest.raises(RuntimeError, match="two ranks"):
        Shard().gather_indexed([(0, "a"), (0, "a")], 1)
    with pytest.raises(RuntimeError, match="1 of 2"):
        Shard().gather_indexed([(0, "a")], 2)
