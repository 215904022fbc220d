"""Our side of the vLLM contract, with a stand-in ``vllm`` module (vLLM cannot be installed here).

What this checks: the arguments we hand to ``vllm.LLM`` / ``vllm.SamplingParams``, how results
become Samples, the seeds (one engine and data-parallel replicas), the reload call, ``close()``,
the parameter checks at our boundary, the config's refusals and the plugin's registration. The
stand-in mirrors vLLM 0.26.0 only where our code calls it: ``LLM.generate`` / ``collective_rpc`` /
``reset_prefix_cache``, ``llm.llm_engine.engine_core.shutdown()``, ``ModelRegistry``. What it
cannot check: that vLLM itself accepts and runs them (tests/gpu/test_vllm.py, on a GPU).

Run: python -m pytest -q tests/sampling/test_vllm.py
"""

from __future__ import annotations

import sys
import tomllib
import types
from pathlib import Path

import pytest

from alignment.sampling import SamplerConfig, SamplingParams, build_sampler, close_sampler
from alignment.sampling.batching import check_params

ROOT = Path(__file__).resolve().parents[2]


class FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.rpcs, self.prefix_resets, self.calls, self.shutdowns = kwargs, [], 0, [], 0
        # vLLM 0.26: LLM.llm_engine (LLMEngine).engine_core (EngineCoreClient).shutdown()
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.instances.append(self)

    def _shutdown(self, timeout=None):
        self.shutdowns += 1

    def generate(self, requests, params, use_tqdm=True):
        self.calls.append((requests, params))
        out = []
        for req, sp in zip(requests, params):
            # Sample j of a prompt: the prompt's first id, then 100 + j.
            comps = [types.SimpleNamespace(token_ids=[req["prompt_token_ids"][0], 100 + j], cumulative_logprob=-1.5 * (j + 1),
                                           finish_reason="length") for j in range(sp.kwargs["n"])]
            out.append(types.SimpleNamespace(outputs=comps))
        return out

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.rpcs.append((method, args, kwargs))

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.prefix_resets += 1


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    registry, calls = {}, []

    def register_model(arch, cls):
        calls.append(arch)
        registry[arch] = cls

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = FakeLLM, FakeSamplingParams
    mod.ModelRegistry = types.SimpleNamespace(get_supported_archs=lambda: registry.keys(), register_model=register_model)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    FakeLLM.instances.clear()
    return types.SimpleNamespace(registry=registry, register_calls=calls)


@pytest.fixture
def checkpoint(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_vllm_sampler_hands_vllm_our_settings_and_converts_results(fake_vllm, checkpoint, tokenizer):
    cfg = {"backend": "vllm", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "max_model_len": 512}
    sampler = build_sampler(cfg, str(checkpoint))
    assert fake_vllm.registry == {"YiLightningForCausalLM": "vllm.model_executor.models.transformers:TransformersMoEForCausalLM"}
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == str(checkpoint) and llm.kwargs["tensor_parallel_size"] == 2
    assert (llm.kwargs["gpu_memory_utilization"], llm.kwargs["max_model_len"], llm.kwargs["dtype"]) == (0.5, 512, "bfloat16")
    # eager by default (torch.compile of our decoder under vLLM is untested); our registered class only
    assert llm.kwargs["enforce_eager"] is True and llm.kwargs["model_impl"] == "auto"
    assert "worker_extension_cls" not in llm.kwargs, "reload goes through vLLM's own reload_weights"

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
    unseeded = sampler.generate(["1+1="], n=1, params=SamplingParams(max_new_tokens=2))
    assert llm.calls[-1][1][0].kwargs["seed"] is None and len(unseeded[0]) == 1


def test_reload_uses_vllms_reload_weights_and_drops_the_prefix_cache(fake_vllm, checkpoint, model, tmp_path):
    sampler = build_sampler({"backend": "vllm"}, str(checkpoint))
    llm = FakeLLM.instances[0]
    newer = tmp_path / "newer"
    model.save_pretrained(newer)
    sampler.reload(newer)
    # vLLM 0.26 Worker.reload_weights(*args, **kwargs) -> GPUModelRunner.reload_weights(weights_path=...):
    # load_weights between its layer-wise reload set-up and post-load processing
    assert llm.rpcs == [("reload_weights", (), {"weights_path": str(newer)})] and llm.prefix_resets == 1
    assert sampler.path == str(newer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        sampler.reload(tmp_path / "empty")
    assert len(llm.rpcs) == 1, "a folder vLLM cannot read is refused before the engine sees it"


def test_close_shuts_the_engine_down_once_and_the_sampler_refuses_more_work(fake_vllm, checkpoint):
    sampler = build_sampler({"backend": "vllm"}, str(checkpoint))
    llm = FakeLLM.instances[0]
    close_sampler(sampler)
    assert llm.shutdowns == 1 and sampler.llm is None
    sampler.close()  # idempotent: the pipeline's finally and an atexit hook may both call it
    assert llm.shutdowns == 1
    with pytest.raises(RuntimeError, match="closed"):
        sampler.generate(["1+1="], n=1, params=SamplingParams(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="closed"):
        sampler.reload(checkpoint)


def test_guarded_sampler_close_reaches_the_engine(fake_vllm, checkpoint):
    from alignment.safety import GuardedSampler

    guarded = GuardedSampler(build_sampler({"backend": "vllm"}, str(checkpoint)))
    close_sampler(guarded)
    assert FakeLLM.instances[0].shutdowns == 1


def test_close_sampler_is_a_no_op_for_in_process_backends(model, tokenizer):
    close_sampler(build_sampler({"backend": "native"}, model, tokenizer))  # nothing to release, no error


class _Conn:
    """A replica's pipe, served in-process by ``_replica_main``'s generate branch."""

    def __init__(self, llm, vllm):
        self.llm, self.vllm, self.reply = llm, vllm, None

    def send(self, msg):
        from alignment.sampling.vllm_backend import _run

        cmd, payload = msg
        assert cmd == "generate"
        self.reply = ("ok", _run(self.llm, self.vllm, *payload))

    def recv(self):
        return self.reply


def test_data_parallel_seeds_follow_the_global_prompt_index(fake_vllm, checkpoint):
    """Regression: shards are strided (replica r gets prompts r, r+k, ...) but the seed offset
    assumed contiguous shards, so replicas reused each other's seeds."""
    single = build_sampler({"backend": "vllm"}, str(checkpoint))
    prompts = [f"{i}+{i}=" for i in range(7)]
    params = SamplingParams(max_new_tokens=2, seed=10)
    single.generate(prompts, n=2, params=params)
    one_engine = [p.kwargs["seed"] for p in FakeLLM.instances[0].calls[0][1]]

    dp = build_sampler({"backend": "vllm"}, str(checkpoint))  # built as one engine, then given 3 replicas
    vllm = sys.modules["vllm"]
    replicas = [FakeLLM() for _ in range(3)]
    dp.llm, dp.replicas = None, [(None, _Conn(r, vllm)) for r in replicas]
    groups = dp.generate(prompts, n=2, params=params)
    per_replica = [[p.kwargs["seed"] for p in r.calls[0][1]] for r in replicas]
    assert per_replica == [[10, 13, 16], [11, 14], [12, 15]]
    assert sorted(s for seeds in per_replica for s in seeds) == one_engine == list(range(10, 17))
    assert [g[0].token_ids[0] for g in groups] == [s[0].token_ids[0] for s in single.generate(prompts, n=2, params=params)]


@pytest.mark.parametrize(
    "params, match",
    [
        (SamplingParams(temperature=2.5), r"temperature must be in \[0, 2\]"),  # vLLM: "temperature must be in [0, 2]"
        (SamplingParams(temperature=-0.1), r"temperature must be in \[0, 2\]"),
        (SamplingParams(temperature=float("nan")), r"temperature must be in \[0, 2\]"),
        (SamplingParams(stop=["</a>", ""]), "non-empty strings"),  # vLLM: "stop cannot contain an empty string"
        (SamplingParams(stop=[None]), "non-empty strings"),
    ],
)
def test_params_vllm_rejects_are_refused_at_our_boundary(params, match):
    with pytest.raises(ValueError, match=match):
        check_params(1, params)


def test_params_at_the_edges_vllm_accepts_pass():
    check_params(1, SamplingParams(temperature=2.0, stop=["x"]))
    check_params(1, SamplingParams(temperature=0.0))


def test_bad_params_fail_before_the_engine_sees_them(fake_vllm, checkpoint):
    sampler = build_sampler({"backend": "vllm"}, str(checkpoint))
    with pytest.raises(ValueError, match="temperature"):
        sampler.generate(["1+1="], n=1, params=SamplingParams(temperature=3.0))
    assert FakeLLM.instances[0].calls == []


def test_model_impl_transformers_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="trust_remote_code"):
        SamplerConfig(backend="vllm", model_impl="transformers")
    with pytest.raises(ValueError, match="must be 'auto'"):
        SamplerConfig(backend="vllm", model_impl="vllm")
    assert SamplerConfig().enforce_eager is True


def test_vllm_sampler_refuses_a_model_object(fake_vllm, model, tokenizer):
    with pytest.raises(TypeError, match="save_pretrained folder"):
        build_sampler({"backend": "vllm"}, model, tokenizer)


def test_vllm_sampler_refuses_a_folder_without_safetensors(fake_vllm, tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        build_sampler({"backend": "vllm"}, str(tmp_path))
    assert FakeLLM.instances == []


def test_plugin_register_is_idempotent(fake_vllm):
    """vLLM runs general plugins once per process, in the engine core and every worker, and asks
    them to tolerate repeats (vllm/plugins/__init__.py, load_general_plugins)."""
    from alignment.sampling.vllm_plugin import register

    register()
    register()
    assert fake_vllm.register_calls == ["YiLightningForCausalLM"]


def test_plugin_entry_point_is_declared_and_checked(fake_vllm, checkpoint, monkeypatch):
    import importlib.metadata

    from alignment.sampling import vllm_plugin

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = meta["project"]["entry-points"]["vllm.general_plugins"]
    assert declared == {vllm_plugin.PLUGIN_NAME: vllm_plugin.PLUGIN_VALUE}
    module, func = vllm_plugin.PLUGIN_VALUE.split(":")
    assert getattr(sys.modules[module], func) is vllm_plugin.register

    installed = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(RuntimeError, match="entry point yi_lightning"):
        build_sampler({"backend": "vllm"}, str(checkpoint))
    monkeypatch.setattr(importlib.metadata, "entry_points", installed)
    monkeypatch.setenv("VLLM_PLUGINS", "some_other_plugin")
    with pytest.raises(RuntimeError, match="VLLM_PLUGINS"):
        build_sampler({"backend": "vllm"}, str(checkpoint))
    assert FakeLLM.instances == [], "the engine never starts without the plugin"


def test_vllm_extra_is_pinned_to_the_torch_of_the_gpu_image():
    """vLLM pins torch exactly (0.26.0: torch==2.11.0; 0.27+: 2.13): only 0.26.x matches the image."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == ["vllm>=0.26,<0.27"]
