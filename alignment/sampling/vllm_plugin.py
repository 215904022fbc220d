"""vLLM out-of-tree registration of the in-repo architecture.

vLLM runs ``register()`` in every process it starts when the project is installed with this entry
point (pyproject.toml)::

    [project.entry-points."vllm.general_plugins"]
    yi_lightning = "alignment.sampling.vllm_plugin:register"

(vLLM 0.26.0: ``vllm.plugins.load_general_plugins`` runs every function of that group, once per
process, in the engine core (v1/engine/core.py) and in each worker (v1/worker/worker_base.py), and
its docstring asks plugins to be safe to load several times: ``register()`` is idempotent.) The
entry point exists only once the project is installed (``pip install -e .``); without it the
engine's processes, which vLLM spawns, never learn our architecture, so ``check_entry_point()``
refuses to start instead.

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

Only this registered path loads our model. ``model_impl: transformers`` cannot: vLLM's registry
(model_executor/models/registry.py, ``_try_resolve_transformers``) looks the class up in the
``transformers`` package (ours is not there) or through the config's ``auto_map``, which needs
``trust_remote_code``; SamplerConfig refuses it.

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

import os

ARCHITECTURE = "YiLightningForCausalLM"
VLLM_CLASS = "vllm.model_executor.models.transformers:TransformersMoEForCausalLM"
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "yi_lightning"
PLUGIN_VALUE = "alignment.sampling.vllm_plugin:register"


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (runs in every vLLM process; idempotent)."""
    import alignment.model  # noqa: F401  (AutoConfig/AutoModel registration of yi_lightning)
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # A "module:Class" string is imported lazily, inside the worker, as vLLM's docs advise.
        ModelRegistry.register_model(ARCHITECTURE, VLLM_CLASS)


def check_entry_point() -> None:
    """Fail before vLLM starts if its worker processes would not load ``register()``."""
    from importlib.metadata import entry_points

    if not any(ep.value == PLUGIN_VALUE for ep in entry_points(group=PLUGIN_GROUP)):
        raise RuntimeError(
            f"sampler backend 'vllm': the {PLUGIN_GROUP} entry point {PLUGIN_NAME} = {PLUGIN_VALUE} is not installed, "
            "so vLLM's engine processes cannot load our architecture. Install the project (pip install -e . --no-deps), "
            "or on a box without pip write a dist-info with that entry_points.txt onto PYTHONPATH (../shared/gpu/pack_vllm.sh)."
        )
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        raise RuntimeError(f"sampler backend 'vllm': VLLM_PLUGINS={allowed!r} leaves out our plugin {PLUGIN_NAME!r}; add it")
