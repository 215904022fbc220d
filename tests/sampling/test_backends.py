"""Backends against each other, the builder and the sampler config.

Run: python -m pytest -q tests/sampling
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from alignment.sampling import Sample, SamplerConfig, SamplingParams, build_sampler

PROMPTS = ["Hello there, how are you today?", "1+1=", [{"role": "user", "content": "What is 2+3?"}]]
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "sampler"


def tokens(groups):
    return [[s.token_ids for s in g] for g in groups]


def test_native_and_hf_agree_at_temperature_zero(model, tokenizer):
    params = SamplingParams(max_new_tokens=12, temperature=0, stop=["e"])
    native = build_sampler({"backend": "native"}, model, tokenizer).generate(PROMPTS, n=2, params=params)
    hf = build_sampler({"backend": "hf"}, model, tokenizer).generate(PROMPTS, n=2, params=params)
    assert tokens(native) == tokens(hf)
    for gn, gh in zip(native, hf):
        for a, b in zip(gn, gh):
            assert isinstance(a, Sample) and (a.text, a.finish_reason) == (b.text, b.finish_reason)
            assert a.logprob_sum == pytest.approx(b.logprob_sum, abs=1e-3)


def test_hf_baseline_reruns_the_prompt_per_sample(model, tokenizer):
    # The baseline's cost the native sampler removes: generate() prefills prompts x n rows.
    rows = []
    original = model.forward

    def spy(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:
            rows.append(ids.shape[0])
        return original(*args, **kwargs)

    model.forward = spy
    try:
        build_sampler({"backend": "hf"}, model, tokenizer).generate(PROMPTS, n=4, params=SamplingParams(max_new_tokens=2, seed=0))
    finally:
        del model.forward
    assert rows == [len(PROMPTS) * 4]


def test_hf_seeded_sampling_is_deterministic(model, tokenizer):
    sampler = build_sampler({"backend": "hf"}, model, tokenizer)
    params = SamplingParams(max_new_tokens=5, seed=11, top_p=0.9)
    first = sampler.generate(PROMPTS[:2], n=3, params=params)
    assert tokens(sampler.generate(PROMPTS[:2], n=3, params=params)) == tokens(first)
    assert [len(g) for g in first] == [3, 3]


def test_native_runs_any_transformers_causal_lm(tokenizer):
    # The native loop only needs forward(input_ids, attention_mask, position_ids, past_key_values):
    # a transformers Llama with its DynamicCache works too, and matches generate().
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    llama = LlamaForCausalLM(cfg).eval()
    params = SamplingParams(max_new_tokens=8, temperature=0)
    native = build_sampler({"backend": "native"}, llama, tokenizer).generate(PROMPTS, n=2, params=params)
    hf = build_sampler({"backend": "hf"}, llama, tokenizer).generate(PROMPTS, n=2, params=params)
    assert tokens(native) == tokens(hf)


def test_build_sampler_loads_a_checkpoint_folder(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    sampler = build_sampler({"backend": "native"}, str(tmp_path))
    params = SamplingParams(max_new_tokens=4, temperature=0)
    from_disk = sampler.generate(PROMPTS[:1], n=1, params=params)
    in_memory = build_sampler({"backend": "native"}, model, tokenizer).generate(PROMPTS[:1], n=1, params=params)
    assert tokens(from_disk) == tokens(in_memory)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_gives_one_clear_error(tmp_path):
    with pytest.raises(ImportError, match=r"backend 'vllm'.*pip install"):
        build_sampler({"backend": "vllm"}, str(tmp_path))


def test_sampler_recipes_compose_into_the_schema():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert names == ["hf", "native", "vllm"]
    for name in names:
        cfg = SamplerConfig.from_any(OmegaConf.load(RECIPES / f"{name}.yaml"))
        assert cfg.backend == name


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"backend": "native", "max_prompt_per_batch": 4}, "unknown sampler config key.*max_prompt_per_batch"),
        ({"backend": "sglang"}, "backend must be one of"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ],
)
def test_bad_sampler_config_names_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig.from_any(bad)


@pytest.mark.parametrize(
    "n, params, match",
    [
        (0, SamplingParams(), "n \\(samples per prompt\\)"),
        (2, SamplingParams(top_p=0.0), "top_p"),
        (2, SamplingParams(temperature=-1), "temperature"),
        (2, SamplingParams(stop="</s>"), "list of strings"),
    ],
)
def test_bad_call_arguments_fail_early(model, tokenizer, n, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_sampler({"backend": "native"}, model, tokenizer).generate(["hi"], n=n, params=params)


def test_bad_prompt_names_its_index(model, tokenizer):
    with pytest.raises(TypeError, match="prompt 1"):
        build_sampler({"backend": "native"}, model, tokenizer).generate(["ok", {"role": "user"}], n=1,
                                                                         params=SamplingParams(max_new_tokens=1))


def test_reload_switches_to_the_newer_policy(model, tokenizer, tmp_path):
    from tests.fixtures_model import build_tiny_model

    newer = build_tiny_model(seed=1, initializer_range=0.3, sliding_window=model.config.sliding_window)
    newer.save_pretrained(tmp_path)
    params = SamplingParams(max_new_tokens=6, temperature=0)
    sampler = build_sampler({"backend": "native"}, model, tokenizer)
    before = tokens(sampler.generate(PROMPTS[:1], n=1, params=params))
    sampler.reload(str(tmp_path))
    after = tokens(sampler.generate(PROMPTS[:1], n=1, params=params))
    assert after != before
    assert after == tokens(build_sampler({"backend": "hf"}, newer, tokenizer).generate(PROMPTS[:1], n=1, params=params))


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_sampling_a_model_in_training_leaves_it_in_training(model, tokenizer, backend):
    # SFT samples pass rates mid-training: the sampler must not flip the caller's model to eval.
    model.train()
    try:
        build_sampler({"backend": backend}, model, tokenizer).generate(["hi"], n=2, params=SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()
