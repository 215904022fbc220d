"""Our side of the vLLM contract, with a stand-in ``vllm`` module (vLLM cannot be installed here).

What this checks: the arguments we hand to ``vllm.LLM`` / ``vllm.SamplingParams``, how results
become Samples, the reload call, the plugin's registration and the worker-side checkpoint reader
(on a real save_pretrained folder). What it cannot check: that vLLM itself accepts and runs them.

Run: python -m pytest -q tests/sampling/test_vllm.py
"""

from __future__ import annotations

import sys
import types

import pytest

from alignment.sampling import SamplingParams, build_sampler


class FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.rpcs, self.prefix_resets, self.calls = kwargs, [], 0, []
        FakeLLM.instances.append(self)

    def generate(self, requests, params, use_tqdm=True):
        self.calls.append((requests, params))
        out = []
        for req, sp in zip(requests, params):
            # Sample j of a prompt: the prompt's first id, then 100 + j.
            comps = [types.SimpleNamespace(token_ids=[req["prompt_token_ids"][0], 100 + j], cumulative_logprob=-1.5 * (j + 1),
                                           finish_reason="length") for j in range(sp.kwargs["n"])]
            out.append(types.SimpleNamespace(outputs=comps))
        return out

    def collective_rpc(self, method, args=()):
        self.rpcs.append((method, args))

    def reset_prefix_cache(self):
        self.prefix_resets += 1


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    registry = {}
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    mod.ModelRegistry = types.SimpleNamespace(
        get_supported_archs=lambda: list(registry), register_model=lambda arch, cls: registry.__setitem__(arch, cls)
    )
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances.clear()
    return registry


def test_vllm_sampler_hands_vllm_our_settings_and_converts_results(fake_vllm, model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = {"backend": "vllm", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "max_model_len": 512}
    sampler = build_sampler(cfg, str(tmp_path))
    assert fake_vllm == {"YiLightningForCausalLM": "vllm.model_executor.models.transformers:TransformersMoEForCausalLM"}
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == str(tmp_path) and llm.kwargs["tensor_parallel_size"] == 2
    assert llm.kwargs["worker_extension_cls"] == "alignment.sampling.vllm_plugin.CheckpointReloadExtension"
    assert (llm.kwargs["gpu_memory_utilization"], llm.kwargs["max_model_len"], llm.kwargs["dtype"]) == (0.5, 512, "bfloat16")

    groups = sampler.generate(["1+1=", "2+2="], n=3, params=SamplingParams(max_new_tokens=7, top_k=5, seed=4, stop=["x"]))
    requests, params = llm.calls[0]
    ids = tokenizer("1+1=")["input_ids"]
    assert requests[0] == {"prompt_token_ids": ids}, "prompts go in as our token ids"
    sp = params[0].kwargs
    assert (sp["n"], sp["max_tokens"], sp["top_k"], sp["stop"], sp["logprobs"]) == (3, 7, 5, ["x"], 0)
    assert [p.kwargs["seed"] for p in params] == [4, 5], "one seed per request so equal prompts still differ"
    assert [len(g) for g in groups] == [3, 3]
    s = groups[0][1]
    assert s.token_ids == [ids[0], 101] and s.logprob_sum == -3.0 and s.finish_reason == "length"
    assert s.text == tokenizer.decode([ids[0], 101], skip_special_tokens=True)

    sampler.reload(tmp_path / "newer")
    assert llm.rpcs == [("reload_checkpoint", (str(tmp_path / "newer"),))] and llm.prefix_resets == 1


def test_vllm_sampler_refuses_a_model_object(fake_vllm, model, tokenizer):
    with pytest.raises(TypeError, match="save_pretrained folder"):
        build_sampler({"backend": "vllm"}, model, tokenizer)


def test_worker_reload_reads_every_weight_of_a_checkpoint(model, tmp_path):
    from alignment.sampling.vllm_plugin import CheckpointReloadExtension

    model.save_pretrained(tmp_path)
    seen = {}

    class Runner:
        class model:  # noqa: N801  (stands in for vLLM's model_runner.model)
            @staticmethod
            def load_weights(weights):
                seen.update({name: t.shape for name, t in weights})
                return set(seen)

    ext = CheckpointReloadExtension()
    ext.model_runner = Runner()
    assert ext.reload_checkpoint(str(tmp_path)) == len(seen) > 0
    state = model.state_dict()
    # Tied lm_head is not saved separately; every saved tensor is a real parameter of the model.
    assert set(seen) <= set(state) and all(tuple(state[k].shape) == tuple(v) for k, v in seen.items())
    assert any(k.endswith("experts.gate_up_proj") for k in seen)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ext.reload_checkpoint(str(tmp_path / "missing"))
