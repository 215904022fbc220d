"""The ``vllm`` backend: ``vllm.LLM`` + ``vllm.SamplingParams(n=...)`` over a checkpoint folder.

Optional extra (GPU only): ``pip install -e '.[vllm]'`` (vLLM 0.26.x, the release built on the GPU
image's torch 2.11; see pyproject.toml). Without it, choosing ``sampler=vllm`` raises one ImportError
saying so. Our architecture reaches vLLM through the plugin in vllm_plugin.py, which vLLM's own
processes find through the ``vllm.general_plugins`` entry point of the installed project.

- Prompts are tokenized here (same chat template as the other backends) and passed as token ids,
  so all backends condition on identical ids; results are rebuilt with the shared StopDetector so
  ``text`` / ``token_ids`` / ``finish_reason`` follow one convention.
- ``logprob_sum`` is vLLM's ``cumulative_logprob`` with ``logprobs=0`` (the sampled token only);
  vLLM's V1 sampler reports raw log-probs (before temperature / top-k / top-p) by default
  (``logprobs_mode="raw_logprobs"``, vllm/config/model.py), which is what Sample.logprob_sum means.
- Seeds: request ``i`` (the prompt's index in the caller's list) gets ``seed + i``, on one engine
  and across data-parallel replicas alike, so equal prompts still differ and no two collide.
- ``tensor_parallel_size`` goes to each ``LLM``; ``data_parallel_size`` > 1 starts that many
  independent replicas in spawned processes, each pinned to its own ``tensor_parallel_size``
  GPUs, and deals the prompts out between them (prompt i to replica i % replicas).
- ``reload(checkpoint)`` loads a newer policy into the running engine(s) between online-DPO rounds
  through vLLM's own ``reload_weights`` worker method (``collective_rpc``; it runs the model's
  ``load_weights`` between vLLM's layer-wise reload set-up and its post-load processing), then
  drops the prefix cache, whose K/V the old weights computed.
- ``close()`` shuts the engine core down (its worker processes and their GPU memory) and empties
  this process's CUDA cache: call it before loading another model on the same card.

Checked against vLLM 0.26.0's source (the wheel): ``LLM.collective_rpc`` / ``reset_prefix_cache``
(vllm/entrypoints/llm.py), ``Worker.reload_weights`` -> ``GPUModelRunner.reload_weights(weights_path=)``
(vllm/v1/worker/gpu_worker.py, gpu_model_runner.py), ``EngineCoreClient.shutdown`` (vllm/v1/engine/
core_client.py; 0.26's ``LLM`` has no ``shutdown``), ``SamplingParams._verify_args``
(vllm/sampling_params.py). Verified here: our side of those calls, against a stand-in module
(tests/sampling/test_vllm.py). On a GPU: tests/gpu/test_vllm.py, not yet run.
"""

from __future__ import annotations

import atexit
import gc
import multiprocessing as mp
import os
from pathlib import Path
from typing import Sequence

from alignment.sampling.base import Prompt, Sample, SamplingParams
from alignment.sampling.batching import check_params, one_call_per_prompt
from alignment.sampling.config import SamplerConfig
from alignment.sampling.tokens import StopDetector, encode_prompts, eos_token_ids


def import_vllm():
    """Import vllm or fail with the one error a user needs to read."""
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "sampler backend 'vllm' needs the optional vllm package, which is not installed. "
            "On a GPU machine with torch 2.11: pip install -e '.[vllm]' (vllm 0.26.x); "
            "anywhere else use sampler=native."
        ) from None
    return vllm


def _llm_kwargs(cfg: SamplerConfig, path: str) -> dict:
    kwargs = dict(
        model=path,
        tokenizer=path,
        dtype="bfloat16" if cfg.dtype == "auto" else cfg.dtype,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enforce_eager=cfg.enforce_eager,
        # Our architecture only: vLLM's registry (model_executor/models/registry.py) then takes the
        # class the plugin registered, never its transformers-library fallback.
        model_impl="auto",
    )
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    return kwargs


def _to_vllm_params(vllm, n: int, params: SamplingParams, seed: int | None):
    return vllm.SamplingParams(
        n=n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,  # 0 = all tokens (vLLM accepts 0 or -1)
        max_tokens=params.max_new_tokens,
        stop=list(params.stop) or None,
        seed=seed,
        logprobs=0,  # the sampled token's log-prob only -> cumulative_logprob is filled
    )


def _run(llm, vllm, token_ids: list[list[int]], n: int, params: SamplingParams, indices: list[int]):
    """Generate on one engine; ``indices`` are the prompts' places in the caller's list (they pick
    the seeds). Returns per prompt a list of (token_ids, cumulative_logprob, finish_reason)."""
    requests = [{"prompt_token_ids": ids} for ids in token_ids]
    sp = [_to_vllm_params(vllm, n, params, None if params.seed is None else params.seed + i) for i in indices]
    outs = llm.generate(requests, sp, use_tqdm=True)
    return [[(list(c.token_ids), c.cumulative_logprob or 0.0, c.finish_reason) for c in o.outputs] for o in outs]


def _reload(llm, path: str) -> None:
    # vLLM's own worker method (v1/worker/gpu_worker.py -> GPUModelRunner.reload_weights): it reads
    # the folder with the loader the engine started with and runs the post-load processing.
    llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
    llm.reset_prefix_cache()  # cached K/V came from the old weights


def _shutdown(llm) -> None:
    """Stop one engine: its engine-core process and workers exit and give their GPU memory back
    (vLLM 0.26's ``LLM`` has no ``shutdown``; ``llm_engine.engine_core`` is its EngineCoreClient)."""
    llm.llm_engine.engine_core.shutdown()


def _empty_cuda_cache() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _replica_main(conn, cfg: SamplerConfig, path: str, gpus: str):
    """One data-parallel replica: its own LLM on its own GPUs, serving requests from the parent."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    vllm = import_vllm()
    llm = vllm.LLM(**_llm_kwargs(cfg, path))
    conn.send(("ready", None))
    while True:
        cmd, payload = conn.recv()
        if cmd == "generate":
            conn.send(("ok", _run(llm, vllm, *payload)))
        elif cmd == "reload":
            _reload(llm, payload)
            conn.send(("ok", None))
        else:
            _shutdown(llm)
            return


def check_checkpoint(path: str) -> None:
    """A save_pretrained folder with safetensors weights (what vLLM's loader reads), or a clear error."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"sampler: model path {path} is not a folder (expected a save_pretrained checkpoint)")
    if not any(Path(path).glob("*.safetensors")):
        raise FileNotFoundError(f"sampler: no *.safetensors in {path}: save the policy with save_pretrained(safe_serialization=True)")


class VLLMSampler:
    """Sampler over vLLM engines (one per data-parallel replica). Call ``close()`` when done."""

    def __init__(self, cfg: SamplerConfig, model_path, tokenizer=None):
        vllm = import_vllm()
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError("sampler backend 'vllm' loads weights itself: pass a save_pretrained folder, not a model object")
        path = str(model_path)
        check_checkpoint(path)
        from alignment.sampling.vllm_plugin import check_entry_point, register

        check_entry_point()  # vLLM's engine and worker processes register our architecture only through it
        register()  # this process too
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        self.vllm, self.cfg, self.path, self.tokenizer = vllm, cfg, path, tokenizer
        self.eos_ids = eos_token_ids(tokenizer)
        self.llm, self.replicas, self.closed = None, [], False
        if cfg.data_parallel_size == 1:
            self.llm = vllm.LLM(**_llm_kwargs(cfg, path))
        else:
            tp, dp = cfg.tensor_parallel_size, cfg.data_parallel_size
            # Replica r takes GPUs r*tp .. r*tp+tp-1 of the ones this process may use.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = visible.split(",") if visible else [str(i) for i in range(tp * dp)]
            if len(gpus) < tp * dp:
                raise ValueError(f"sampler: data_parallel_size {dp} x tensor_parallel_size {tp} needs {tp * dp} GPUs, "
                                 f"CUDA_VISIBLE_DEVICES gives {len(gpus)}")
            ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
            for r in range(dp):
                parent, child = ctx.Pipe()
                # Not a daemon: vLLM starts its own engine process, which a daemon may not do.
                proc = ctx.Process(target=_replica_main, args=(child, cfg, path, ",".join(gpus[r * tp : (r + 1) * tp])))
                proc.start()
                self.replicas.append((proc, parent))
            atexit.register(self.close)
            for _, conn in self.replicas:
                conn.recv()  # wait until every replica has loaded

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("sampler backend 'vllm': this sampler was closed (its engine is gone); build a new one")

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Sample]]:
        if params.seeds is not None:  # not yet mapped onto vLLM's per-request seeds (GPU check pending)
            return one_call_per_prompt(self, prompts, n, params)
        check_params(n, params)
        self._check_open()
        ids = encode_prompts(self.tokenizer, prompts)
        if self.llm is not None:
            raw = _run(self.llm, self.vllm, ids, n, params, list(range(len(ids))))
        else:
            k = len(self.replicas)
            shards = [list(range(len(ids)))[r::k] for r in range(k)]  # strided: replica r gets r, r+k, ...
            for (_, conn), shard in zip(self.replicas, shards):
                conn.send(("generate", ([ids[i] for i in shard], n, params, shard)))
            raw = [None] * len(ids)
            for (_, conn), shard in zip(self.replicas, shards):
                _, res = conn.recv()
                for i, r in zip(shard, res):
                    raw[i] = r
        detector = StopDetector(self.tokenizer, params.stop, self.eos_ids)
        return [[detector.finish(t, lp, ended=reason == "stop") for t, lp, reason in group] for group in raw]

    def reload(self, checkpoint) -> None:
        """Load a newer policy (a save_pretrained folder of the same architecture) in place."""
        self._check_open()
        path = str(checkpoint)
        check_checkpoint(path)
        if self.llm is not None:
            _reload(self.llm, path)
        for _, conn in self.replicas:
            conn.send(("reload", path))
        for _, conn in self.replicas:
            conn.recv()
        self.path = path

    def close(self) -> None:
        """Release the engine(s) and their GPU memory now, not at garbage collection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.llm is not None:
            llm, self.llm = self.llm, None
            _shutdown(llm)
            del llm
        for proc, conn in self.replicas:
            conn.send(("stop", None))
        for proc, conn in self.replicas:
            proc.join(timeout=120)
            if proc.is_alive():  # a replica that does not stop in time must not keep its GPUs
                proc.terminate()
                proc.join(timeout=30)
        self.replicas = []
        _empty_cuda_cache()
