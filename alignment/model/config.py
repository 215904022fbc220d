"""`YiLightningConfig`: the typed config of the in-repo Yi-Lightning-style MoE, and `load_preset`.

    from alignment.model import load_preset
    cfg = load_preset("tiny", num_hidden_layers=4)   # reads recipes/model/tiny.yaml, then overrides

Facts from the report (DESIGN.md) are defaults: 3 sliding-window layers (window 4,096) + 1 full
layer, consecutive full-attention layers sharing one KV (pairs), 64K context, vocabulary 100,352,
balance-loss coefficients 1e-6 / 1e-4 / 1e-3. Sizes (layers, experts, top-k) are not in the report;
the defaults here are ours.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml
from transformers import PreTrainedConfig

from alignment.paths import RECIPES_DIR

PRESET_DIR = RECIPES_DIR / "model"
LAYER_TYPES = ("sliding_attention", "full_attention")

# `save_pretrained` writes `auto_map` only for the saved class; TRL's DPOTrainer reads it to rebuild a
# reference model and vLLM's transformers backend reads `AutoModel` (STACK.md pitfalls 2 and 9).
AUTO_MAP = {
    "AutoConfig": "alignment.model.config.YiLightningConfig",
    "AutoModel": "alignment.model.modeling.YiLightningModel",
    "AutoModelForCausalLM": "alignment.model.modeling.YiLightningForCausalLM",
    "AutoModelForSequenceClassification": "alignment.model.modeling.YiLightningForSequenceClassification",
}


class YiLightningConfig(PreTrainedConfig):
    r"""Configuration of the Yi-Lightning-style MoE decoder.

    Args:
        vocab_size (`int`, *optional*, defaults to `100352`): vocabulary size (the report's tokenizer).
        hidden_size (`int`, *optional*, defaults to `2048`): model width D.
        intermediate_size (`int`, *optional*, defaults to `5632`): FFN width of the dense layers
            (the first `first_k_dense_layers`).
        num_hidden_layers (`int`, *optional*, defaults to `24`): decoder layers.
        num_attention_heads (`int`, *optional*, defaults to `16`): query heads.
        num_key_value_heads (`int`, *optional*, defaults to `4`): key/value heads (GQA).
        head_dim (`int`, *optional*, defaults to `None`): per-head size; `hidden_size // num_attention_heads` if unset.
        max_position_embeddings (`int`, *optional*, defaults to `65536`): longest context (64K in the report).
        rope_theta (`float`, *optional*, defaults to `5000000.0`): RoPE base, raised for long context.
        rope_scaling (`dict`, *optional*, defaults to `None`): long-context RoPE scaling,
            `{"type": "linear"|"ntk", "factor": float}` (position interpolation or NTK-aware base scaling).
        rms_norm_eps (`float`, *optional*, defaults to `1e-6`): RMSNorm epsilon.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`): share input and output embeddings.
        initializer_range (`float`, *optional*, defaults to `0.02`): std of the normal init.
        sliding_window (`int`, *optional*, defaults to `4096`): window of the sliding-attention layers.
        full_attention_interval (`int`, *optional*, defaults to `4`): every n-th layer is full attention
            (layers n-1, 2n-1, ...), the rest sliding: 3 sliding + 1 full with 4.
        layer_types (`list[str]`, *optional*, defaults to `None`): explicit per-layer
            `"sliding_attention"`/`"full_attention"`; derived from `full_attention_interval` when unset.
        kv_sharing (`bool`, *optional*, defaults to `True`): consecutive full-attention layers share one KV.
        kv_share_group_size (`int`, *optional*, defaults to `2`): full-attention layers per shared KV (pairs).
        first_k_dense_layers (`int`, *optional*, defaults to `1`): leading layers with a dense FFN instead of MoE.
        num_experts (`int`, *optional*, defaults to `64`): routed (fine-grained) experts per MoE layer.
        num_shared_experts (`int`, *optional*, defaults to `2`): always-on experts of `moe_intermediate_size`.
        moe_intermediate_size (`int`, *optional*, defaults to `704`): FFN width of one expert.
        router_type (`str`, *optional*, defaults to `"topk"`): `"topk"` or `"top_p"` (dynamic top-p).
        router_top_k (`int`, *optional*, defaults to `6`): experts per token for `topk` routing.
        router_top_p (`float`, *optional*, defaults to `0.5`): probability mass to cover for `top_p` routing.
        router_min_k (`int`, *optional*, defaults to `1`): fewest experts per token under `top_p` routing.
        router_max_k (`int`, *optional*, defaults to `8`): most experts per token under `top_p` routing.
        norm_topk_prob (`bool`, *optional*, defaults to `True`): renormalise the chosen experts' weights to sum to 1.
        aux_coef_switch (`float`, *optional*, defaults to `1e-6`): weight of the expert-level Switch loss.
        aux_coef_ep (`float`, *optional*, defaults to `1e-4`): weight of the expert-parallel-group loss.
        aux_coef_pep (`float`, *optional*, defaults to `1e-3`): weight of the partition-level loss.
        ep_groups (`int`, *optional*, defaults to `8`): expert-parallel groups (devices) the experts split into.
        pep_partitions (`int`, *optional*, defaults to `2`): partitions inside each group.
        impl (`str`, *optional*, defaults to `"auto"`): kernel switch for `alignment.kernels` (auto|torch|triton).
        output_router_logits (`bool`, *optional*, defaults to `False`): return per-layer router logits; TRL
            reads this attribute to enable its MoE aux-loss path.
        router_aux_loss_coef (`float`, *optional*, defaults to `1e-6`): the coefficient TRL multiplies *its own*
            Switch-style aux loss with when it replaces the LM head (fused path). Our own forward does not use
            it: our `loss = CE + aux_loss`, where `aux_loss` already carries the three coefficients above.
    """

    model_type = "yi_lightning"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 100352
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = None
    max_position_embeddings: int = 65536
    rope_theta: float = 5000000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    sliding_window: int = 4096
    full_attention_interval: int = 4
    layer_types: list | None = None
    kv_sharing: bool = True
    kv_share_group_size: int = 2
    first_k_dense_layers: int = 1
    num_experts: int = 64
    num_shared_experts: int = 2
    moe_intermediate_size: int = 704
    router_type: str = "topk"
    # Prefixed with `router_`: plain `top_k`/`top_p` on a model config are read by generate() as
    # *sampling* settings (GenerationConfig.from_model_config), which would silently change decoding.
    router_top_k: int = 6
    router_top_p: float = 0.5
    router_min_k: int = 1
    router_max_k: int = 8
    norm_topk_prob: bool = True
    aux_coef_switch: float = 1e-6
    aux_coef_ep: float = 1e-4
    aux_coef_pep: float = 1e-3
    ep_groups: int = 8
    pep_partitions: int = 2
    impl: str = "auto"
    output_router_logits: bool = False
    router_aux_loss_coef: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            n = self.full_attention_interval
            self.layer_types = [
                "full_attention" if n > 0 and (i + 1) % n == 0 else "sliding_attention"
                for i in range(self.num_hidden_layers)
            ]
        if self.auto_map is None:
            self.auto_map = dict(AUTO_MAP)
        super().__post_init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str):
            raise ValueError(f"YiLightningConfig: {msg}")

        if len(self.layer_types) != self.num_hidden_layers:
            bad(f"layer_types has {len(self.layer_types)} entries, num_hidden_layers is {self.num_hidden_layers}")
        for i, t in enumerate(self.layer_types):
            if t not in LAYER_TYPES:
                bad(f"layer_types[{i}] = {t!r}, expected one of {LAYER_TYPES}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.router_type not in ("topk", "top_p"):
            bad(f"router_type = {self.router_type!r}, expected 'topk' or 'top_p'")
        if not 1 <= self.router_top_k <= self.num_experts:
            bad(f"router_top_k = {self.router_top_k} must be in [1, num_experts={self.num_experts}]")
        if not 1 <= self.router_min_k <= self.router_max_k <= self.num_experts:
            bad(f"need 1 <= router_min_k ({self.router_min_k}) <= router_max_k ({self.router_max_k}) <= num_experts ({self.num_experts})")
        if self.num_experts % (self.ep_groups * self.pep_partitions):
            bad(f"num_experts ({self.num_experts}) must split evenly into ep_groups ({self.ep_groups}) x "
                f"pep_partitions ({self.pep_partitions})")
        if self.kv_share_group_size < 1:
            bad(f"kv_share_group_size must be >= 1, got {self.kv_share_group_size}")
        if self.sliding_window < 1:
            bad(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.impl not in ("auto", "torch", "triton"):
            bad(f"impl = {self.impl!r}, expected auto|torch|triton")
        if self.rope_scaling is not None and self.rope_scaling.get("type") not in ("linear", "ntk"):
            bad(f"rope_scaling.type = {self.rope_scaling.get('type')!r}, expected 'linear' or 'ntk'")

    # TRL and the Mixtral-style aux loss read this name (STACK.md pitfall 4).
    @property
    def num_experts_per_tok(self) -> int:
        return self.router_top_k if self.router_type == "topk" else self.router_max_k

    # ---------------------------------------------------------------- layer plan (shared by model and cache)
    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_layers and self.num_experts > 0

    def kv_plan(self) -> list[int]:
        """For each layer, the index of the layer whose K/V it uses (itself unless it shares).

        Full-attention layers are taken in order and grouped `kv_share_group_size` at a time; every
        layer of a group reads the K/V its first layer computed (cross-layer KV sharing).
        """
        owner = list(range(self.num_hidden_layers))
        if not self.kv_sharing or self.kv_share_group_size == 1:
            return owner
        full = [i for i, t in enumerate(self.layer_types) if t == "full_attention"]
        for g in range(0, len(full), self.kv_share_group_size):
            group = full[g : g + self.kv_share_group_size]
            for i in group:
                owner[i] = group[0]
        return owner


def _config_fields() -> set[str]:
    # num_labels is an init-only PreTrainedConfig argument (it builds id2label), not a dataclass field.
    return {f.name for f in dataclasses.fields(YiLightningConfig)} | {"num_labels"}


def load_preset(name: str, **overrides: Any) -> YiLightningConfig:
    """Build a `YiLightningConfig` from `recipes/model/<name>.yaml`, then apply `overrides`.

    Unknown keys (in the file or the overrides) raise `KeyError` naming the key and the file.
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no model preset {name!r} at {path}; known presets: {known}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of YiLightningConfig fields, got {type(values).__name__}")
    return config_from_dict({**values, **overrides}, source=str(path))


def config_from_dict(values: dict, source: str = "<dict>") -> YiLightningConfig:
    """`YiLightningConfig(**values)` that rejects unknown keys (a Hydra `model` group resolves to such a dict)."""
    fields = _config_fields()
    values = {k: v for k, v in dict(values).items() if k != "_target_"}
    for key in values:
        if key not in fields:
            raise KeyError(f"{source}: unknown YiLightningConfig key {key!r}")
    return YiLightningConfig(**values)
