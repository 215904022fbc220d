"""The ``vllm`` backend: ``vllm.LLM`` + ``vllm.SamplingParams(n=...)`` over a checkpoint folder.

Optional extra (GPU only): ``pip install vllm``. Without it, choosing ``sampler=vllm`` raises one
ImportError saying so. Our architecture reaches vLLM through the plugin in vllm_plugin.py.

- Prompts are tokenized here (same chat template as the other backends) and passed as token ids,
  so all backends condition on identical ids; results are rebuilt with the shared StopDetector so
  ``text`` / ``token_ids`` / ``finish_reason`` follow one convention.
- ``logprob_sum`` is vLLM's ``cumulative_logprob`` with ``logprobs=0`` (the sampled token only);
  vLLM's V1 sampler reports raw log-probs (before temperature / top-k / top-p) by default
  (``logprobs_mode="raw_logprobs"``), which is what Sample.logprob_sum means.
- ``tensor_parallel_size`` goes to each ``LLM``; ``data_parallel_size`` > 1 starts that many
  independent replicas in spawned processes, each pinned to its own ``tensor_parallel_size``
  GPUs, and splits the prompts between them.
- ``reload(checkpoint)`` loads a newer policy into the running engine(s) between online-DPO rounds
  (``collective_rpc`` into vllm_plugin.CheckpointReloadExtension) and drops the prefix cache.

Verified here: the missing-vllm error (tests/sampling). Written against vLLM's documented API
(LLM, SamplingParams, collective_rpc, worker_extension_cls, reset_prefix_cache, general plugins)
but never run: vLLM cannot be installed on these machines.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
from pathlib import Path
from typing import Sequence

from alignment.sampling.base import Prompt, Sample, SamplingParams
from alignment.sampling.batching import check_params
from alignment.sampling.config import SamplerConfig
from alignment.sampling.tokens import StopDetector, encode_prompts, eos_token_ids

EXTENSION = "alignment.sampling.vllm_plugin.CheckpointReloadExtension"


def import_vllm():
    """Import vllm or fail with the one error a user needs to read."""
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "sampler backend 'vllm' needs the optional vllm package, which is not installed. "
            "On a GPU machine: pip install 'vllm>=0.22,<=0.31' (matches torch 2.13 / transformers <5.18); "
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
        worker_extension_cls=EXTENSION,
    )
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.model_impl == "transformers":
        kwargs["model_impl"] = "transformers"
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


def _run(llm, vllm, token_ids: list[list[int]], n: int, params: SamplingParams, offset: int):
    """Generate on one engine; returns per prompt a list of (token_ids, cumulative_logprob, finish_reason)."""
    requests = [{"prompt_token_ids": ids} for ids in token_ids]
    # One seed per request (offset by the prompt's global index) so equal prompts still differ.
    sp = [_to_vllm_params(vllm, n, params, None if params.seed is None else params.seed + offset + i)
          for i in range(len(token_ids))]
    outs = llm.generate(requests, sp, use_tqdm=True)
    return [[(list(c.token_ids), c.cumulative_logprob or 0.0, c.finish_reason) for c in o.outputs] for o in outs]


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
            llm.collective_rpc("reload_checkpoint", args=(payload,))
            llm.reset_prefix_cache()
            conn.send(("ok", None))
        else:
            return


class VLLMSampler:
    """Sampler over vLLM engines (one per data-parallel replica)."""

    def __init__(self, cfg: SamplerConfig, model_path, tokenizer=None):
        vllm = import_vllm()
        if not isinstance(model_path, (str, os.PathLike)):
            raise TypeError("sampler backend 'vllm' loads weights itself: pass a save_pretrained folder, not a model object")
        path = str(model_path)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"sampler: model path {path} is not a folder (expected a save_pretrained checkpoint)")
        from alignment.sampling.vllm_plugin import register

        register()  # this process too (the entry point covers vLLM's own processes)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        self.vllm, self.cfg, self.path, self.tokenizer = vllm, cfg, path, tokenizer
        self.eos_ids = eos_token_ids(tokenizer)
        self.llm, self.replicas = None, []
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

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[list[Sample]]:
        check_params(n, params)
        ids = encode_prompts(self.tokenizer, prompts)
        if self.llm is not None:
            raw = _run(self.llm, self.vllm, ids, n, params, 0)
        else:
            k = len(self.replicas)
            shards = [list(range(len(ids)))[r::k] for r in range(k)]
            for (_, conn), shard in zip(self.replicas, shards):
                conn.send(("generate", ([ids[i] for i in shard], n, params, shard[0] if shard else 0)))
            raw = [None] * len(ids)
            for (_, conn), shard in zip(self.replicas, shards):
                _, res = conn.recv()
                for i, r in zip(shard, res):
                    raw[i] = r
        detector = StopDetector(self.tokenizer, params.stop, self.eos_ids)
        return [[detector.finish(t, lp, ended=reason == "stop") for t, lp, reason in group] for group in raw]

    def reload(self, checkpoint) -> None:
        """Load a newer policy (a save_pretrained folder of the same architecture) in place."""
        path = str(checkpoint)
        if self.llm is not None:
            self.llm.collective_rpc("reload_checkpoint", args=(path,))
            self.llm.reset_prefix_cache()
        for _, conn in self.replicas:
            conn.send(("reload", path))
        for _, conn in self.replicas:
            conn.recv()
        self.path = path

    def close(self) -> None:
        for proc, conn in self.replicas:
            conn.send(("stop", None))
            proc.join(timeout=30)
        self.replicas = []
