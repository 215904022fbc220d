"""The Yi-Lightning-style MoE decoder, HF-native (single device, no training code).

Notable features (DESIGN.md "Facts from the report"):
- fine-grained routed experts (+ optional shared experts), top-k or dynamic top-p routing, and the
  three-level balance loss (Switch / expert-parallel group / partition), see routing.py;
- 3 sliding-window : 1 full attention layers; consecutive full-attention layers share one K/V
  (cross-layer KV sharing), see `YiLightningConfig.kv_plan` and cache.py;
- packed sequences (position_ids restarting at 0, TRL padding-free) get a block-causal mask;
- first_k_dense_layers with a dense SwiGLU FFN.

Ops run through `alignment.kernels` (moe_experts, rms_norm, hybrid_attention), so the Triton /
Flex paths are used on GPU and the PyTorch references on CPU (`config.impl`). When an external
attention backend is set (`config._attn_implementation` not eager/sdpa, e.g. vLLM's), attention is
routed through transformers' `ALL_ATTENTION_FUNCTIONS` instead.

    import alignment                              # registers model_type "yi_lightning" with the Auto classes
    from alignment.model import load_preset, YiLightningForCausalLM
    model = YiLightningForCausalLM(load_preset("tiny"))

Shape legend: B batch, S query length, L key length, D hidden, H query heads, Kh kv heads,
Dh head dim, T tokens (B*S), E experts, K routing slots, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from alignment import kernels
from alignment.model import routing
from alignment.model.cache import YiLightningCache
from alignment.model.config import YiLightningConfig

_NATIVE_ATTN = (None, "eager", "sdpa")


# ------------------------------------------------------------------------------------------ outputs
@dataclass
class YiLightningModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: YiLightningCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    router_stats: dict | None = None


@dataclass
class YiLightningCausalLMOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    past_key_values: YiLightningCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    router_stats: dict | None = None


@dataclass
class YiLightningSequenceClassifierOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    router_stats: dict | None = None


# ------------------------------------------------------------------------------------------ pieces
class YiLightningRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, impl: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.impl = eps, impl

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps, impl=self.impl)


def rope_cos_sin(config: YiLightningConfig, position_ids_BS: torch.Tensor, dtype: torch.dtype):
    """cos/sin [B, S, Dh] for rotary embeddings; `rope_scaling` stretches long contexts.

    inv_freq is computed per call (Dh/2 numbers) rather than stored, so meta-device loading in
    from_pretrained never leaves it uninitialised.
    """
    Dh = config.head_dim
    base, pos = config.rope_theta, position_ids_BS.float()
    scaling = config.rope_scaling or {}
    if scaling.get("type") == "ntk":
        base = base * scaling["factor"] ** (Dh / (Dh - 2))
    elif scaling.get("type") == "linear":
        pos = pos / scaling["factor"]
    inv_freq = 1.0 / (base ** (torch.arange(0, Dh, 2, device=pos.device, dtype=torch.float32) / Dh))
    freqs = pos[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x_BHSD, cos_BSD, sin_BSD):
    x1, x2 = x_BHSD.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x_BHSD * cos_BSD[:, None] + rotated * sin_BSD[:, None]


@dataclass
class AttentionContext:
    """Per-forward masking facts shared by all layers (built once in `YiLightningModel.forward`).

    past_len: positions already in the cache. seq_ids_BS: sample id per position when packing or
    padding splits the rows (None = plain causal). key_valid_BL: the 2D attention mask over every
    position seen so far (None = all valid), used when decoding against a cache.
    """

    past_len: int
    seq_ids_BS: torch.Tensor | None
    key_valid_BL: torch.Tensor | None


def cached_attention(q_BHSD, k_BHLD, v_BHLD, kpos_L, ctx: AttentionContext, sliding_window: int | None):
    """Attention of new queries against cached keys whose absolute positions are `kpos_L`.

    Same rule as `kernels.hybrid_attention` (causal, window i - j < W), plus the padding mask; a
    query may always see itself so fully padded rows never produce NaN.
    """
    B, H, S, _ = q_BHSD.shape
    qpos_S = torch.arange(ctx.past_len, ctx.past_len + S, device=q_BHSD.device)
    diff_SL = qpos_S[:, None] - kpos_L[None, :]
    mask_SL = diff_SL >= 0
    if sliding_window is not None:
        mask_SL = mask_SL & (diff_SL < sliding_window)
    mask = mask_SL[None, None]
    if ctx.key_valid_BL is not None:
        valid_BL = ctx.key_valid_BL[:, kpos_L].bool()
        mask = (mask & valid_BL[:, None, None, :]) | (diff_SL == 0)[None, None]
    Kh = k_BHLD.shape[1]
    if Kh != H:
        k_BHLD = k_BHLD.repeat_interleave(H // Kh, dim=1)
        v_BHLD = v_BHLD.repeat_interleave(H // Kh, dim=1)
    return F.scaled_dot_product_attention(q_BHSD, k_BHLD, v_BHLD, attn_mask=mask)


class YiLightningAttention(nn.Module):
    """GQA attention; sliding or full per `config.layer_types`; K/V either computed here (owner) or
    borrowed from the first layer of its sharing group (`config.kv_plan()`)."""

    def __init__(self, config: YiLightningConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.is_sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if self.is_sliding else None
        self.owns_kv = config.kv_plan()[layer_idx] == layer_idx
        H, Kh, Dh, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = H, Kh, Dh
        self.num_key_value_groups = H // Kh  # read by transformers' attention functions (GQA repeat)
        self.scaling = Dh**-0.5
        self.is_causal = True
        self.q_proj = nn.Linear(D, H * Dh, bias=False)
        if self.owns_kv:
            self.k_proj = nn.Linear(D, Kh * Dh, bias=False)
            self.v_proj = nn.Linear(D, Kh * Dh, bias=False)
        self.o_proj = nn.Linear(H * Dh, D, bias=False)

    def forward(self, h_BSD, cos, sin, ctx: AttentionContext, shared_kv, past_key_values, position_ids=None, **kwargs):
        # kwargs reach external attention backends only (vLLM's transformers backend passes
        # `attention_instances` through the base model's forward); the native path ignores them.
        B, S, _ = h_BSD.shape
        q = apply_rope(self.q_proj(h_BSD).view(B, S, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
        if self.owns_kv:
            k = self.k_proj(h_BSD).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(h_BSD).view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
            k = apply_rope(k, cos, sin)
            kpos = None
            if past_key_values is not None:
                k, v, kpos = past_key_values.update_layer(self.layer_idx, k, v)
            shared_kv = (k, v, kpos)
        else:
            if shared_kv is None:
                raise RuntimeError(f"layer {self.layer_idx} shares K/V but its group's first layer produced none")
            k, v, kpos = shared_kv

        attn_impl = self.config._attn_implementation
        if attn_impl not in _NATIVE_ATTN:
            # External backends (vLLM's transformers backend, flash-attn, ...) get the standard functional
            # call; they apply causality, `sliding_window` and position_ids-based packing themselves.
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn_impl, None)
            out, _ = attention_interface(
                self, q, k, v, None, dropout=0.0, scaling=self.scaling, sliding_window=self.sliding_window,
                position_ids=position_ids, **kwargs,
            )
            out = out.reshape(B, S, -1)
        else:
            if ctx.past_len == 0:
                # Keys are exactly the current positions: the kernel's causal/window/packing rule applies.
                out = kernels.hybrid_attention(
                    q, k, v, sliding_window=self.sliding_window, seq_ids_BS=ctx.seq_ids_BS, impl=self.config.impl
                )
            else:
                out = cached_attention(q, k, v, kpos, ctx, self.sliding_window)
            out = out.transpose(1, 2).reshape(B, S, -1)
        return self.o_proj(out), shared_kv


class YiLightningMLP(nn.Module):
    """Dense SwiGLU FFN (first_k_dense_layers, and the shared experts fused into one)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class YiLightningExperts(nn.Module):
    """Routed experts as 3D weights (vLLM transformers-backend / transformers-5 MoE convention).

    gate_up_proj [E, 2I, D] (gate rows first), down_proj [E, D, I]; the math is
    `alignment.kernels.moe_experts`.
    """

    def __init__(self, config: YiLightningConfig):
        super().__init__()
        E, I, D = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.num_experts, self.impl = E, config.impl
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return kernels.moe_experts(
            hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights.float(), impl=self.impl
        )


class YiLightningMoE(nn.Module):
    """Router (`gate`) + routed `experts` + optional `shared_experts`."""

    def __init__(self, config: YiLightningConfig):
        super().__init__()
        self.config = config
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = YiLightningExperts(config)
        self.shared_experts = (
            YiLightningMLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts > 0
            else None
        )

    def route(self, x_TD):
        c = self.config
        logits_TE = self.gate(x_TD).float()  # softmax and balance losses in float32
        probs_TE = logits_TE.softmax(-1)
        if c.router_type == "topk":
            idx_TK, w_TK = routing.route_topk(probs_TE, c.router_top_k, c.norm_topk_prob)
        else:
            idx_TK, w_TK = routing.route_top_p(probs_TE, c.router_top_p, c.router_min_k, c.router_max_k, c.norm_topk_prob)
        return logits_TE, probs_TE, idx_TK, w_TK

    def forward(self, h_BSD, token_mask_T):
        c = self.config
        x_TD = h_BSD.reshape(-1, h_BSD.shape[-1])
        logits_TE, probs_TE, idx_TK, w_TK = self.route(x_TD)
        y_TD = self.experts(x_TD, idx_TK, w_TK)
        if self.shared_experts is not None:
            y_TD = y_TD + self.shared_experts(x_TD)
        losses = routing.aux_losses(probs_TE, idx_TK, c.ep_groups, c.pep_partitions, token_mask_T)
        weighted = c.aux_coef_switch * losses["switch"] + c.aux_coef_ep * losses["ep"] + c.aux_coef_pep * losses["pep"]
        stats = routing.routing_stats(probs_TE, idx_TK, token_mask_T)
        stats.update({f"aux_{k}": v.detach() for k, v in losses.items()})
        return y_TD.view_as(h_BSD), logits_TE, weighted, stats


class YiLightningDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: YiLightningConfig, layer_idx: int):
        super().__init__()
        self.self_attn = YiLightningAttention(config, layer_idx)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = YiLightningMoE(config) if self.is_moe else YiLightningMLP(config.hidden_size, config.intermediate_size)
        eps, impl = config.rms_norm_eps, config.impl
        self.input_layernorm = YiLightningRMSNorm(config.hidden_size, eps, impl)
        self.post_attention_layernorm = YiLightningRMSNorm(config.hidden_size, eps, impl)

    def forward(
        self, h_BSD, cos, sin, ctx=None, shared_kv=None, past_key_values=None, token_mask_T=None, position_ids=None,
        **attn_kwargs,
    ):
        attn_out, shared_kv = self.self_attn(
            self.input_layernorm(h_BSD), cos, sin, ctx, shared_kv, past_key_values, position_ids, **attn_kwargs
        )
        # Residual add fused into the norm (one pass over h on the Triton path): x = norm(h + attn), h += attn.
        norm = self.post_attention_layernorm
        x, h_BSD = kernels.rms_norm(attn_out, norm.weight, norm.eps, residual=h_BSD, impl=norm.impl)
        if self.is_moe:
            y, router_logits, aux, stats = self.mlp(x, token_mask_T)
        else:
            y, router_logits, aux, stats = self.mlp(x), None, None, None
        return h_BSD + y, shared_kv, router_logits, aux, stats


# ------------------------------------------------------------------------------------------ models
class YiLightningPreTrainedModel(PreTrainedModel):
    config_class = YiLightningConfig
    config: YiLightningConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["YiLightningDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, YiLightningExperts):
            std = self.config.initializer_range
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then :func:`realign_cpu_tensors` on the loaded model."""
        loaded = super().from_pretrained(*args, **kwargs)
        realign_cpu_tensors(loaded[0] if isinstance(loaded, tuple) else loaded)  # (model, info) with output_loading_info
        return loaded


# torch's CPU allocator returns 64-byte aligned memory (one AVX-512 register / cache line).
CPU_ALIGNMENT = 64


def realign_cpu_tensors(model: nn.Module, alignment: int = CPU_ALIGNMENT) -> int:
    """Copy every CPU parameter and buffer whose data is not ``alignment``-byte aligned into fresh memory.

    ``from_pretrained`` leaves CPU weights inside the safetensors file's memory map, at the file's
    8-byte offsets, while a model built in memory has 64-byte aligned weights. MKL's sgemm may round
    differently for a differently aligned operand (its SSE4.2 path does, e.g. with
    ``MKL_ENABLE_INSTRUCTIONS=SSE4_2`` or on CPUs where MKL does not pick its AVX2/AVX-512 kernels), so
    a reloaded checkpoint gave logits ~4e-7 away from the model that was saved. Aligned copies make
    save -> load bit-identical on every CPU. Tied weights stay tied (the Parameter object is kept,
    only its data moves). Returns how many tensors were copied.
    """
    copied = 0
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.device.type == "cpu" and t.numel() and t.data_ptr() % alignment:
                t.data = t.data.clone(memory_format=torch.preserve_format)
                copied += 1
    return copied


def _packing_seq_ids(position_ids_BS, attention_mask_BS):
    """Sample id per position: a new sample starts where position_ids restart at 0 (padding-free
    packing) or where the attention mask turns from pad to real (left padding).

    Computed on the device without asking whether any row holds a second sample: that question
    (one ``bool()``) made the host wait for the GPU at the start of every forward. A batch whose
    rows are one sample each gets one id per row and the same attention as plain causal; with right
    padding (the trainers' and the reward scorer's batches) the trailing pads share their row's id,
    which changes nothing for the real tokens (they sit before every pad). The caller passes
    neither position_ids nor a mask for plain causal batches (None: no per-batch mask at all)."""
    starts = position_ids_BS == 0
    if attention_mask_BS is not None:
        m = attention_mask_BS.bool()
        starts = starts | torch.cat([torch.zeros_like(m[:, :1]), m[:, 1:] & ~m[:, :-1]], dim=1)
    starts[:, 0] = True
    return starts.long().cumsum(-1)


class YiLightningModel(YiLightningPreTrainedModel):
    """The decoder stack (embeddings -> layers -> final norm); returns `last_hidden_state`."""

    def __init__(self, config: YiLightningConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(YiLightningDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = YiLightningRMSNorm(config.hidden_size, config.rms_norm_eps, config.impl)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        output_router_logits=None,
        **kwargs,
    ) -> YiLightningModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, S, _ = inputs_embeds.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if use_cache and past_key_values is None:
            past_key_values = YiLightningCache(self.config)
        if not use_cache:
            past_key_values = None
        if past_key_values is not None and not isinstance(past_key_values, YiLightningCache):
            raise TypeError(f"past_key_values must be a YiLightningCache, got {type(past_key_values).__name__}")
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2D [batch, seq], got shape {tuple(attention_mask.shape)}")

        plain_causal = position_ids is None and attention_mask is None  # one sample per row, no padding
        if position_ids is None:
            if attention_mask is not None:
                # Left padding (generate): positions count real tokens only, as HF models do.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -S:]
            else:
                position_ids = torch.arange(past_len, past_len + S, device=inputs_embeds.device)[None].expand(B, S)
        query_mask = attention_mask[:, -S:] if attention_mask is not None else None
        ctx = AttentionContext(
            past_len=past_len,
            seq_ids_BS=_packing_seq_ids(position_ids, query_mask) if past_len == 0 and not plain_causal else None,
            key_valid_BL=attention_mask,
        )
        cos, sin = rope_cos_sin(self.config, position_ids, inputs_embeds.dtype)
        token_mask_T = query_mask.reshape(-1) if query_mask is not None else None

        h = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        router_logits, aux_terms, stats = [], [], []
        shared = {}
        plan = self.config.kv_plan()
        for i, layer in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(h)
            h, kv, logits_TE, aux, st = layer(
                h, cos, sin, ctx=ctx, shared_kv=shared.get(plan[i]), past_key_values=past_key_values,
                token_mask_T=token_mask_T, position_ids=position_ids, **kwargs,
            )
            if plan[i] == i:
                shared[i] = kv
            if logits_TE is not None:
                router_logits.append(logits_TE)
                aux_terms.append(aux)
                stats.append(st)
        h = self.norm(h)
        if all_hidden is not None:
            all_hidden.append(h)
        aux_loss = torch.stack(aux_terms).mean() if aux_terms else h.new_zeros((), dtype=torch.float32)
        router_stats = {k: torch.stack([s[k] for s in stats]) for k in stats[0]} if stats else {}
        return YiLightningModelOutput(
            last_hidden_state=h,
            past_key_values=past_key_values,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            aux_loss=aux_loss,
            router_logits=tuple(router_logits) if output_router_logits else None,
            router_stats=router_stats,
        )


class YiLightningForCausalLM(YiLightningPreTrainedModel, GenerationMixin):
    """Decoder + LM head. `loss = CE + aux_loss` when `labels` are given (aux_loss already weighted)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: YiLightningConfig):
        super().__init__(config)
        self.model = YiLightningModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # generate() would build a DynamicCache (no ring buffer, no sharing): build ours instead.
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            model_kwargs["past_key_values"] = YiLightningCache(self.config)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        output_router_logits=None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> YiLightningCausalLMOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            # kwargs may carry num_items_in_batch (Trainer's gradient-accumulation-correct normalisation).
            ce = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = ce + out.aux_loss.to(ce.dtype)
        return YiLightningCausalLMOutput(
            loss=loss,
            logits=logits,
            aux_loss=out.aux_loss,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            router_logits=out.router_logits,
            router_stats=out.router_stats,
        )


class YiLightningForSequenceClassification(YiLightningPreTrainedModel):
    """Decoder + `score` head read at the last non-pad token (reward models: num_labels=1)."""

    def __init__(self, config: YiLightningConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = YiLightningModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        output_router_logits=None,
        **kwargs,
    ) -> YiLightningSequenceClassifierOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
        )
        scores_BSN = self.score(out.last_hidden_state)
        B, S = scores_BSN.shape[:2]
        if attention_mask is not None:
            # Index of the last real token (works for left and right padding).
            ar = torch.arange(S, device=scores_BSN.device)
            last = (ar[None] * attention_mask.bool()).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            non_pad = (input_ids != self.config.pad_token_id).long()
            last = (torch.arange(S, device=input_ids.device)[None] * non_pad).argmax(-1)
        else:
            last = torch.full((B,), S - 1, device=scores_BSN.device, dtype=torch.long)
        logits = scores_BSN[torch.arange(B, device=scores_BSN.device), last]
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
            loss = loss + out.aux_loss
        return YiLightningSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            aux_loss=out.aux_loss,
            hidden_states=out.hidden_states,
            router_logits=out.router_logits,
            router_stats=out.router_stats,
        )
