"""SamplerConfig: the schema of the ``sampler`` recipe group (recipes/sampler/{native,hf,vllm}.yaml).

A stage that samples pulls the group by interpolation (``sampler: ${sampler}``) and hands it,
with the checkpoint to sample from, to :func:`alignment.sampling.build_sampler`::

    sampler = build_sampler(cfg.sampler, ctx.input("policy", "model"), device=ctx.device)

``cfg`` may be a :class:`SamplerConfig`, a plain dict or an OmegaConf node; unknown keys fail
naming the key, so a typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

try:  # hydra-core is a core dependency, but the GPU image runs samplers without it
    from omegaconf import DictConfig, OmegaConf
except ImportError:  # pragma: no cover
    DictConfig = OmegaConf = None

BACKENDS = ("native", "hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class SamplerConfig:
    """How to sample: which backend and how to batch. What to sample (temperature, stops, ...)
    is per call, in :class:`alignment.sampling.SamplingParams`.

    Args:
        backend (`str`, *optional*, defaults to `"native"`): ``native`` (the in-repo model with its
            own KV cache), ``hf`` (``transformers`` ``generate``, the baseline) or ``vllm``.
        max_prompts_per_batch (`int`, *optional*, defaults to `16`): prompts prefilled together;
            each is decoded ``n`` times, so a decode batch holds up to ``max_prompts_per_batch * n``
            rows (capped by ``max_batch_size``).
        max_batch_size (`int`, *optional*, defaults to `512`): decode rows (prompts x samples) at most
            in one batch; fewer prompts per batch are taken when ``n`` is large.
        dtype (`str`, *optional*, defaults to `"auto"`): ``auto`` (bfloat16 on CUDA, float32 on CPU),
            ``float32``, ``bfloat16`` or ``float16``. Applied when the sampler loads a checkpoint; a
            model object passed in is used as it is.
        device (`str | None`, *optional*): overrides the ``device`` argument of ``build_sampler``.
        decode (`str`, *optional*, defaults to `"auto"`): native only, how decode steps run: ``model``
            (the model's own forward + YiLightningCache; finished rows are dropped from the batch),
            ``static`` (static_decode.py: fixed-shape K/V buffers, graph-capturable; in-repo model
            only) or ``auto`` (``static`` on CUDA for the in-repo model, ``model`` elsewhere).
        cuda_graphs (`bool`, *optional*, defaults to `True`): native only: capture the static decode
            step in a CUDA graph (one per batch) on CUDA; ignored on CPU.
        compile_decode (`bool`, *optional*, defaults to `False`): native only: run the static decode
            step through ``torch.compile`` (Inductor fuses its elementwise kernels; one compile per
            process, dynamic in batch size and length; the first batch pays it).
        prompt_pad_multiple (`int | None`, *optional*): native only: left-pad each batch's prompts to a
            multiple of this width, so compiled kernels (FlexAttention prefill, compiled per shape on
            CUDA) see few distinct shapes; ``None`` = 64 on CUDA, 1 elsewhere.
        sort_by_length (`bool`, *optional*, defaults to `True`): group prompts of similar length into
            one batch, to waste less on left padding; results keep the caller's order.
        tensor_parallel_size (`int`, *optional*, defaults to `1`): vllm only: GPUs per model replica.
        data_parallel_size (`int`, *optional*, defaults to `1`): vllm only: model replicas; prompts
            are split between them (one ``vllm.LLM`` per replica, each in its own process group).
        gpu_memory_utilization (`float`, *optional*, defaults to `0.85`): vllm only: share of GPU
            memory for weights + KV cache.
        max_model_len (`int | None`, *optional*): vllm only: context length to reserve KV for;
            ``None`` takes the model config's.
        enforce_eager (`bool`, *optional*, defaults to `True`): vllm only: run eagerly, without
            vLLM's torch.compile and CUDA graphs; compiling our decoder under vLLM is untested.
        model_impl (`str`, *optional*, defaults to `"auto"`): vllm only, and ``auto`` is the only
            value: vLLM loads our architecture through the class the plugin registers
            (alignment/sampling/vllm_plugin.py). ``transformers`` is refused: vLLM's Transformers
            path looks the class up in the transformers package (ours is not there) or through
            ``auto_map``, which needs ``trust_remote_code``.
    """

    backend: str = "native"
    max_prompts_per_batch: int = 16
    max_batch_size: int = 512
    dtype: str = "auto"
    device: str | None = None
    decode: str = "auto"
    cuda_graphs: bool = True
    compile_decode: bool = False
    prompt_pad_multiple: int | None = None
    sort_by_length: bool = True
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    enforce_eager: bool = True
    model_impl: str = "auto"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"sampler.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"sampler.dtype must be one of {DTYPES}, got {self.dtype!r}")
        for key in ("max_prompts_per_batch", "max_batch_size", "tensor_parallel_size", "data_parallel_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"sampler.{key} must be >= 1, got {getattr(self, key)}")
        if self.prompt_pad_multiple is not None and self.prompt_pad_multiple < 1:
            raise ValueError(f"sampler.prompt_pad_multiple must be >= 1 or null, got {self.prompt_pad_multiple}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"sampler.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.decode not in ("auto", "model", "static"):
            raise ValueError(f"sampler.decode must be 'auto', 'model' or 'static', got {self.decode!r}")
        if self.model_impl == "transformers":
            raise ValueError(
                "sampler.model_impl: 'transformers' cannot load YiLightningForCausalLM (vLLM looks the class up in the "
                "transformers package, where it is not, or through auto_map, which needs trust_remote_code); "
                "use 'auto', which loads the architecture our vLLM plugin registers"
            )
        if self.model_impl != "auto":
            raise ValueError(f"sampler.model_impl must be 'auto', got {self.model_impl!r}")

    @classmethod
    def from_any(cls, cfg: "SamplerConfig | Mapping[str, Any] | None") -> "SamplerConfig":
        """Coerce a dataclass, dict or OmegaConf node to a SamplerConfig; unknown keys raise."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if DictConfig is not None and isinstance(cfg, DictConfig):
            # Resolve interpolations (``${...}``) before reading values.
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise TypeError(f"sampler config must be a SamplerConfig or a mapping, got {type(cfg).__name__}")
        items = dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(items) - known - {"_target_"})
        if unknown:
            raise ValueError(f"unknown sampler config key(s) {unknown}; known keys are {sorted(known)}")
        items.pop("_target_", None)
        return cls(**items)

    def torch_dtype(self, device: str):
        """The torch dtype to load weights in on ``device`` (``auto``: bf16 on CUDA, fp32 elsewhere)."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)
