"""The in-repo Yi-Lightning-style MoE: config, model classes, routing, KV cache.

    from alignment.model import YiLightningConfig, YiLightningForCausalLM, load_preset
    model = YiLightningForCausalLM(load_preset("tiny"))

Importing this package registers model_type ``yi_lightning`` with AutoConfig, AutoModel,
AutoModelForCausalLM and AutoModelForSequenceClassification (``import alignment`` does it too).
Tokenizer and upcycling live in ``alignment.model.tokenizer`` / ``alignment.model.upcycle``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from alignment.model.cache import YiLightningCache, kv_cache_bytes, kv_cache_bytes_all_full, kv_cache_ratio
from alignment.model.config import YiLightningConfig, config_from_dict, load_preset
from alignment.model.modeling import (
    YiLightningForCausalLM,
    YiLightningForSequenceClassification,
    YiLightningModel,
    YiLightningPreTrainedModel,
)

__all__ = [
    "YiLightningConfig",
    "YiLightningModel",
    "YiLightningPreTrainedModel",
    "YiLightningForCausalLM",
    "YiLightningForSequenceClassification",
    "YiLightningCache",
    "load_preset",
    "config_from_dict",
    "kv_cache_bytes",
    "kv_cache_bytes_all_full",
    "kv_cache_ratio",
]


def _register() -> None:
    # exist_ok: re-importing (pytest, Hydra reloads) must not fail.
    AutoConfig.register("yi_lightning", YiLightningConfig, exist_ok=True)
    AutoModel.register(YiLightningConfig, YiLightningModel, exist_ok=True)
    AutoModelForCausalLM.register(YiLightningConfig, YiLightningForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(YiLightningConfig, YiLightningForSequenceClassification, exist_ok=True)


_register()
