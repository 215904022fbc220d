"""vLLM out-of-tree registration of the in-repo architecture, and the worker-side weight reload.

vLLM runs ``register()`` in every process it starts (engine core, each TP/PP worker) when the
project is installed with this entry point (pyproject.toml)::

    [project.entry-points."vllm.general_plugins"]
    yi_lightning = "alignment.sampling.vllm_plugin:register"

``register()`` does two things:
1. imports ``alignment.model``, which registers ``model_type: yi_lightning`` with transformers'
   AutoConfig / AutoModel / AutoModelForCausalLM, so vLLM can read our checkpoints' config.json
   and instantiate the HF model without ``trust_remote_code``;
2. maps the architecture name in our config.json (``YiLightningForCausalLM``) to vLLM's
   Transformers modeling backend for MoE models (``TransformersMoEForCausalLM``). Our model
   follows that backend's contract (docs/models/supported_models.md, "Writing custom models"):
   attention goes through ``ALL_ATTENTION_FUNCTIONS`` when an external backend is set, the MoE
   block has an ``experts`` module of 3D parameters whose ``forward(hidden_states, top_k_index,
   top_k_weights)``, and the base model sets ``_supports_attention_backend = True``.

``CheckpointReloadExtension`` is passed to ``vllm.LLM(worker_extension_cls=...)`` so that
``llm.collective_rpc("reload_checkpoint", args=(path,))`` loads a newer policy's safetensors into
every worker in place (the pattern of vLLM's examples/offline_inference/rlhf_utils.py), without
restarting the engine between online-DPO rounds.

Not verified here (vLLM cannot be installed on these machines): that vLLM's Transformers backend
runs this model end to end. Read from vLLM's source (vllm/model_executor/models/transformers/):
the backend builds the model with ``AutoModel.from_config`` (our registration above), sets
``config._attn_implementation = "vllm"`` and calls the model with an ``attention_instances=``
keyword that its attention function looks up by ``module.layer_idx``; the backbone passes its
``**kwargs`` down to that call (tests/model/test_attention_kwargs.py). Known gaps:
- vLLM keeps one KV cache per layer: a KV-sharing layer hands its owner's K/V to its own vLLM
  attention instance, which is correct but stores them twice (no sharing saving), and the ring
  buffers are replaced by vLLM's paged sliding-window attention;
- the MoE aux losses / routing stats are still computed in every forward (wasted, not wrong).
"""

from __future__ import annotations

ARCHITECTURE = "YiLightningForCausalLM"
VLLM_CLASS = "vllm.model_executor.models.transformers:TransformersMoEForCausalLM"


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (runs in every vLLM process)."""
    import alignment.model  # noqa: F401  (AutoConfig/AutoModel registration of yi_lightning)
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # A "module:Class" string is imported lazily, inside the worker, as vLLM's docs advise.
        ModelRegistry.register_model(ARCHITECTURE, VLLM_CLASS)


def iter_checkpoint_weights(path: str):
    """(name, tensor) pairs of every ``*.safetensors`` file in a ``save_pretrained`` folder."""
    from pathlib import Path

    from safetensors.torch import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}: save the policy with save_pretrained(safe_serialization=True)")
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


class CheckpointReloadExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); ``self.model_runner`` is the
    worker's. Each TP rank reads the full tensors and ``load_weights`` keeps its own shard."""

    def reload_checkpoint(self, path: str) -> int:
        loaded = self.model_runner.model.load_weights(weights=iter_checkpoint_weights(path))
        return len(loaded) if loaded is not None else -1
