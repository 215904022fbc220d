"""Supervised fine-tuning stages (``sft_broad``, ``sft_hard``) over TRL's SFTTrainer on the in-repo MoE.

One runner serves both SFT stages of the Yi-Lightning recipe:

- ``sft_broad`` (stage 1): input ``policy`` = the base model; a broad mixture (~1.3M examples in
  the paper recipe; chatterbot dialogs + synthetic math in the embedded default).
- ``sft_hard`` (stage 2): input ``policy`` = the ``sft_broad`` model; ~300K hard examples: each
  pool source keeps its highest-loss rows under the stage-1 model (optionally also lowest pass
  rate), plus the synth stage's verified SFT records (optional input ``synth``, output ``sft``).

Run it through the pipeline (``yialign stages=[sft_broad,sft_hard]``) or alone::

    python -m alignment.pipeline pipeline=tiny_cpu stages=[sft_broad]

What the loss is (``sft_loss``): cross-entropy over assistant tokens only, averaged per sample
over its own tokens and then over samples (``loss_weighting: sample``; ``token`` gives the usual
token mean), plus the model's own MoE balance loss ``aux_loss`` (the report's three-level
a_ST*L_ST + a_EP*L_EP + a_PEP*L_PEP, already weighted by the model config). TRL 1.16 does add
*an* aux loss when the config has ``output_router_logits``/``router_aux_loss_coef``, but it is
Mixtral's Switch loss over top-``num_experts_per_tok`` routing (ignoring dynamic top-p and the
EP/PEP terms) and it is dropped altogether when a ``compute_loss_func`` is passed. So
:class:`MoESFTTrainer` overrides the public ``compute_loss`` (as TRL's own deprecation note
advises), never a private hook. Packing uses TRL's padding-free batches: ``position_ids``
restart at 0 per sample and the model builds the block-causal mask from them.

Outputs (``StageResult.outputs``): ``model`` (merged model + tokenizer), ``dataset`` (the mixture
JSONL), ``card`` (its data card). Checkpoints go to ``ctx.checkpoint_dir``; a rerun resumes from
``ctx.last_checkpoint()``.

Under ``accelerate launch`` (``stage.sft_broad.accelerate=ddp|fsdp2|cpu_ddp``) every rank builds
the same mixture (same seed, same sources) and trains on its shard of each global batch; only
rank 0 writes the JSONL, card, logs and the published model, after a barrier.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from omegaconf import MISSING, OmegaConf
from trl import SFTConfig, SFTTrainer

from alignment.artifacts import atomic_write_json, atomic_write_jsonl, file_hash
from alignment.data.assemble import assemble
from alignment.data.cards import write_mixture_card
from alignment.data.decontam import DecontamSpec
from alignment.data.hard import HardSelectionSpec, example_losses, pass_rates
from alignment.data.mixture import MixtureSpec
from alignment.data.sources import SourceSpec, load_source
from alignment.errors import ConfigError, DataError
from alignment.safety.filter import SafetyConfig, SafetyFilter
from alignment.stage_contract import StageContext, StageResult
from alignment.train.args import LoraSpec, TrainArgs
from alignment.train.aux_loss import MoEAuxLossMixin, add_aux_loss
from alignment.train.losses import per_sample_mean, sample_ids_from_position_ids, token_logprobs
from alignment.train.profile import profile_callbacks

LOSS_WEIGHTINGS = ("sample", "token")
REPORT_TO = ("none", "tensorboard", "wandb")


@dataclass
class SFTStageConfig(TrainArgs):
    """Schema of ``recipes/stage/sft_broad.yaml`` and ``sft_hard.yaml`` (paper-scale defaults): the
    training fields of :class:`alignment.train.args.TrainArgs` plus these.

    Args:
        mixture (`MixtureSpec`): sources and target count (from the ``data`` group, e.g.
            ``${data.sft_broad}``).
        decontam (`DecontamSpec`, *optional*): 30-gram decontamination (``${data.decontam}``).
        hard (`HardSelectionSpec`, *optional*): stage-2 hard selection; off for stage 1.
        synth_key (`str`, *optional*, defaults to `"sft"`): output of the ``synth`` input holding
            verified SFT records (used only when the stage has a ``synth`` input).
        synth_skip_bad_rows (`bool`, *optional*, defaults to `False`): drop malformed synth rows.
        decontam_inputs (`list[str]`, *optional*, defaults to `[]`): extra eval sets produced by
            earlier stages, as ``"<input name>:<output key>"`` (JSONL files, e.g. a held-out
            synthetic set); added to ``decontam.extra_paths``.
        sampler (`dict`, *optional*): sampler block (``${sampler}``) for pass rates.
        max_length (`int`, *optional*, defaults to `4096`): tokens per packed row / per sample.
        packing (`bool`, *optional*, defaults to `True`): padding-free packing (block-causal mask).
        assistant_only_loss (`bool`, *optional*, defaults to `True`): loss on assistant tokens only.
        loss_weighting (`str`, *optional*, defaults to `"sample"`): ``sample`` (each sample's loss
            averaged over its own tokens, then over samples) or ``token``.
        loss_impl (`str`, *optional*, defaults to `"auto"`): ``logits`` (full logits, then log-softmax),
            ``fused`` (chunked linear cross-entropy from the final hidden states; never builds the
            [tokens, vocab] logits) or ``auto`` (fused on CUDA, logits on CPU).
        num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps:
            :class:`~alignment.train.args.TrainArgs` fields with SFT defaults (`2.0`, `4`, `8`).
        report_to (`str`, *optional*, defaults to `"none"`): ``none``, ``tensorboard`` or ``wandb``
            (the package must be installed; TensorBoard event files go to
            ``<stage>/checkpoints/runs/`` unless ``TENSORBOARD_LOGGING_DIR`` is set).
        lora (`LoraSpec`, *optional*): LoRA option.
        sft_args (`dict`, *optional*, defaults to `{}`): further ``trl.SFTConfig`` fields, verbatim.
        safety (`SafetyConfig`, *optional*): RAISE switches (``${safety}``): with ``enabled``, every
            source is filtered (drops counted by reason in the card) and the generated safety
            targets join the mixture with weight ``sft_weight``.
    """

    mixture: MixtureSpec = MISSING
    decontam: DecontamSpec = field(default_factory=DecontamSpec)
    hard: HardSelectionSpec = field(default_factory=lambda: HardSelectionSpec(enabled=False))
    synth_key: str = "sft"
    synth_skip_bad_rows: bool = False
    decontam_inputs: list[str] = field(default_factory=list)
    sampler: Optional[dict[str, Any]] = None
    max_length: int = 4096
    packing: bool = True
    assistant_only_loss: bool = True
    loss_weighting: str = "sample"
    loss_impl: str = "auto"
    # TrainArgs fields whose defaults differ for SFT
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    report_to: str = "none"
    lora: LoraSpec = field(default_factory=LoraSpec)
    sft_args: dict[str, Any] = field(default_factory=dict)
    safety: SafetyConfig = field(default_factory=SafetyConfig)


# --------------------------------------------------------------------------- loss


def router_balance(router_stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat router-balance numbers from the model's ``router_stats`` (one row per MoE layer).

    ``load_max_over_mean``: busiest expert's token count over the mean (1.0 = perfectly even),
    averaged over layers; ``load_cv``: coefficient of variation of the per-expert load. Values are
    0-d tensors on the model's device, read only when a log line is written (no sync per step).
    """
    if not router_stats:
        return {}
    out: dict[str, float] = {}
    load_LE = router_stats.get("tokens_per_expert")
    if load_LE is not None:
        load_LE = load_LE.float()
        mean_L = load_LE.mean(-1).clamp_min(1e-9)
        out["router/load_max_over_mean"] = (load_LE.max(-1).values / mean_L).mean()
        out["router/load_cv"] = (load_LE.std(-1, unbiased=False) / mean_L).mean()
    for key in ("experts_per_token", "entropy", "aux_switch", "aux_ep", "aux_pep"):
        if key in router_stats:
            out[f"router/{key}"] = router_stats[key].float().mean()
    return out


def sft_loss(
    model, inputs: dict[str, torch.Tensor], loss_weighting: str = "sample", num_items_in_batch=None, lm_head_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
    """SFT loss of one micro-batch: (CE term + model aux loss, model outputs, parts for logging).

    ``inputs`` is a TRL collator batch: ``input_ids``, ``labels`` (-100 off the assistant), and
    either ``attention_mask`` (padded rows, one sample each) or ``position_ids`` (padding-free
    packing: samples restart at position 0). With ``loss_weighting="token"`` and
    ``num_items_in_batch`` (the Trainer's token count over the accumulated step), the CE term is
    the token sum over that count; with ``"sample"`` it is the per-sample mean of this
    micro-batch (the caller divides by the accumulation steps).

    With ``lm_head_weight`` (the LM head of the unwrapped model) the [tokens, vocab] logits are
    never built: the model is asked for its final hidden states and a single position of logits,
    and ``alignment.kernels.linear_cross_entropy`` scores the labels in chunks (Triton on CUDA).
    The forward still goes through ``model`` itself, so DDP/FSDP wrappers see it.
    """
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    # Next-token alignment: position t predicts label t+1.
    shift_labels = labels[:, 1:]
    if lm_head_weight is None:
        outputs = model(**model_inputs, use_cache=False)
        nll = -token_logprobs(outputs.logits[:, :-1], shift_labels)
    else:
        from alignment.kernels import linear_cross_entropy

        outputs = model(**model_inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        h = outputs.hidden_states[-1][:, :-1]
        logp = linear_cross_entropy(h.reshape(-1, h.shape[-1]), lm_head_weight, shift_labels.reshape(-1))
        nll = -logp.view_as(shift_labels)
    mask = shift_labels != -100
    if loss_weighting == "sample":
        sample_ids = None
        if "position_ids" in inputs and "attention_mask" not in inputs:
            sample_ids = sample_ids_from_position_ids(inputs["position_ids"])[:, 1:]
        ce = per_sample_mean(nll, mask, sample_ids)
    else:
        denom = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        ce = nll.sum() / torch.as_tensor(denom, device=nll.device).clamp(min=1)
    aux = outputs.aux_loss if outputs.aux_loss is not None else ce.new_zeros(())
    # parts["ce"] stays in the graph: compute_loss rescales the CE term through it (world size, accumulation)
    return add_aux_loss(ce, outputs.aux_loss), outputs, {"ce": ce, "aux": aux.detach(), "tokens": mask.sum()}


class MoESFTTrainer(MoEAuxLossMixin, SFTTrainer):
    """SFTTrainer whose loss is :func:`sft_loss` (per-sample weighting + the model's own MoE aux loss).

    Overrides only the public ``compute_loss``; the mixin's ``log`` adds the CE, aux and
    router-balance means to every log line.
    """

    def __init__(self, *args, loss_weighting: str = "sample", fused_ce: bool = False, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        text_config = model.config.get_text_config()
        saved = {k: getattr(text_config, k) for k in ("output_router_logits", "router_aux_loss_coef") if hasattr(text_config, k)}
        super().__init__(*args, **kwargs)
        # SFTTrainer rewrites these two config fields for its own (Mixtral-style) aux path, which
        # compute_loss below does not use; restore them so the saved config is the one loaded.
        for k, v in saved.items():
            setattr(text_config, k, v)
        self.loss_weighting = loss_weighting
        self.fused_ce = fused_ce

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        head = self.accelerator.unwrap_model(model).get_output_embeddings().weight if self.fused_ce else None
        loss, outputs, parts = sft_loss(model, inputs, self.loss_weighting, num_items_in_batch, head)
        world = self.accelerator.num_processes
        if self.loss_weighting == "token" and num_items_in_batch is not None and self.args.average_tokens_across_devices and world > 1:
            # num_items_in_batch is then the token count of all ranks, so this rank's CE is its share
            # of the global token mean and DDP's gradient average would divide it by the world size
            # once more (halving the step on 2 ranks); scale back, as Trainer.compute_loss does.
            loss = loss + parts["ce"] * (world - 1)
            parts["ce"] = parts["ce"] * world
        # With num_items_in_batch the Trainer leaves gradient-accumulation scaling to the loss:
        # the token-weighted CE already divides by the step's token count; the per-sample CE and
        # the aux loss are micro-batch means, so divide them by the accumulation steps.
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            steps = self.current_gradient_accumulation_steps
            if self.loss_weighting == "sample":
                loss = loss / steps
            else:
                loss = parts["ce"] + (loss - parts["ce"]) / steps
        if model.training:
            self.log_moe("ce_loss", parts["ce"].detach(), True)
            self.log_moe(self.aux_log_key, parts["aux"], True)
            self.log_moe("loss_tokens", parts["tokens"], True)
            for k, v in router_balance(outputs.router_stats or {}).items():
                self.log_moe(k, v, True)
        return (loss, outputs) if return_outputs else loss


# --------------------------------------------------------------------------- stage


def _to_spec(cfg: Any) -> SFTStageConfig:
    """Accept the dataclass, a DictConfig or a dict (tests); validates keys via OmegaConf's schema."""
    if isinstance(cfg, SFTStageConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(SFTStageConfig), cfg)
    return OmegaConf.to_object(merged)


def _build_model(policy_path: str, cfg: SFTStageConfig, device: str):
    import alignment.model  # noqa: F401  (registers yi_lightning with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.checkpoints import check_model_dir

    check_model_dir(policy_path, "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    return model.to(device), tokenizer


def _resolve(path: Optional[str]):
    if not path:
        return None
    from hydra.utils import get_method

    return get_method(path)


def run(cfg: SFTStageConfig, ctx: StageContext) -> StageResult:
    """Build the stage's mixture, train with :class:`MoESFTTrainer`, publish model + data + card."""
    t0 = time.time()
    cfg = _to_spec(cfg)
    if cfg.loss_impl not in ("auto", "logits", "fused"):
        raise ConfigError(f"loss_impl must be auto, logits or fused, got {cfg.loss_impl!r}")
    if cfg.report_to not in REPORT_TO:
        raise ConfigError(f"report_to must be one of {REPORT_TO}, got {cfg.report_to!r}")
    if cfg.loss_weighting not in LOSS_WEIGHTINGS:  # checked again per batch by sft_loss; here before any work
        raise ConfigError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {cfg.loss_weighting!r}")
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        # Fail before hours of data preparation, not at the first log line.
        raise ImportError(f"report_to={cfg.report_to!r} needs the '{cfg.report_to}' package: pip install {cfg.report_to}")
    device = ctx.device if ctx.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # Under a distributed launch every rank builds the same data and trains; only rank 0 writes.
    main = ctx.is_main_process
    policy_path = str(ctx.input("policy", "model"))
    model, tokenizer = _build_model(policy_path, cfg, device)

    # ---- data: load, decontaminate, (rank hard), mix, write JSONL + card
    extra = []
    if "synth" in ctx.inputs:
        synth_path = ctx.input("synth", cfg.synth_key)
        spec = SourceSpec(name="synth_sft", path=str(synth_path), format="auto", skip_bad_rows=cfg.synth_skip_bad_rows, license="generated by the synth stage (stage-1 policy outputs kept by verifiers)")
        extra.append(load_source(spec, ctx.seed, allow_empty=True))  # a weak policy may verify nothing
    scorer = rater = None
    if cfg.hard.enabled:
        scorer = lambda recs: example_losses(model, tokenizer, recs, cfg.hard.max_length, cfg.hard.batch_size, device)  # noqa: E731
        rate_fn = _resolve(cfg.hard.pass_rate_fn)
        if rate_fn is not None:
            from alignment.sampling import SamplingParams, build_sampler
            from alignment.sampling.base import close_sampler

            # from the checkpoint, in the sampler's dtype (bf16 on CUDA): the training model's fp32
            # copy decoded 1,024-row batches 3-5x slower (h100_small at 6c29cef: 111 s of its 134 s data step)
            sampler = build_sampler(cfg.sampler, policy_path, tokenizer, device=device)
            params = SamplingParams(max_new_tokens=cfg.hard.pass_rate_max_new_tokens, temperature=1.0, seed=ctx.seed)
            rater = lambda recs: pass_rates(recs, sampler, rate_fn, cfg.hard.pass_rate_k, params)  # noqa: E731
    eval_files = [str(ctx.input(name, key or None)) for name, _, key in (ref.partition(":") for ref in cfg.decontam_inputs)]
    decontam = replace(cfg.decontam, extra_paths=list(cfg.decontam.extra_paths) + eval_files)
    mixture, safety = cfg.mixture, None
    if cfg.safety.enabled:
        # RAISE: filter every source, and mix the generated safety targets in by recipe weight
        safety = SafetyFilter(cfg.safety)
        if cfg.safety.sft_weight > 0:
            mixture = replace(mixture, sources=list(mixture.sources) + [SourceSpec(
                name="safety", path="builtin:safety", size=cfg.safety.sft_size, weight=cfg.safety.sft_weight)])
    try:
        data = assemble(mixture, decontam, ctx.seed, extra, cfg.hard, scorer, rater, _resolve(cfg.hard.seed_expander), safety)
    finally:
        if rater is not None:  # its weights copy and decode buffers go before training allocates
            close_sampler(sampler)
            sampler = rater = None
    if not data.records:

        per_source = {s["name"]: f"{s['available']} left of {s['rows_read']} read from {s['path']}" for s in data.report["sources"]}
        raise DataError(f"stage '{ctx.name}': the mixture '{cfg.mixture.name}' is empty after filtering and "
                        f"decontamination ({per_source})")
    if main:
        data_path = ctx.stage_dir / "dataset.jsonl"
        atomic_write_jsonl(data_path, data.records)
        card_path = ctx.stage_dir / "card.md"
        decontam_card = {k: v for k, v in data.report["decontamination"].items() if k != "dropped_by_source"}
        decontam_card["safety_filter"] = data.report["safety_filter"]
        write_mixture_card(
            card_path, data.report, f"SFT mixture of stage `{ctx.name}` (Yi-Lightning-style post-training).",
            {"dataset.jsonl": file_hash(data_path)}, ["messages", "source", "id"], ctx.name, decontam_card,
        )
        atomic_write_json(ctx.stage_dir / "mixture_report.json", data.report)
    t_data = time.time() - t0

    # ---- train
    import datasets

    train_ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in data.records])
    on_cuda = device.startswith("cuda")
    sft_kwargs = cfg.hf_kwargs(str(ctx.checkpoint_dir), device, ctx.seed)
    sft_kwargs.update(
        max_length=cfg.max_length,
        packing=cfg.packing,
        assistant_only_loss=cfg.assistant_only_loss,
        logging_first_step=True,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        # The mixture is already shuffled by seed; TRL's shuffle would be a second, separate seed.
        shuffle_dataset=False,
    )
    sft_kwargs.update(cfg.sft_args)  # recipe passthrough wins over the derived values
    args = SFTConfig(**sft_kwargs)
    trainer = MoESFTTrainer(
        model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
        peft_config=cfg.lora.peft_config(), loss_weighting=cfg.loss_weighting,
        fused_ce=cfg.loss_impl == "fused" or (cfg.loss_impl == "auto" and on_cuda),
        callbacks=profile_callbacks(),
    )
    if (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled) and cfg.lora.enabled:
        # the publish step merges adapters into gathered full weights, which is not wired for shards
        raise ConfigError(f"stage '{ctx.name}': lora.enabled under an FSDP/ZeRO-3 launch is not supported; use accelerate=ddp")
    resume = ctx.last_checkpoint()
    t1 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    t_train = time.time() - t1

    # ---- save: merged weights + tokenizer, published atomically (rank 0, after every rank is done)
    final = trainer.model
    # FSDP / ZeRO-3 shard the weights: gathering the full state dict is collective, so every rank calls it.
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    trainer.accelerator.wait_for_everyone()
    if main:
        if cfg.lora.enabled:
            final = final.merge_and_unload()
        tmp = ctx.tmp_dir("model")
        final.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        ctx.publish(tmp, "model")

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # the router numbers of the last logged window (the closing summary line may carry a partial one)
    router = [h for h in trainer.state.log_history if "router/load_max_over_mean" in h and "loss" in h]
    metrics = {
        "train_loss": float(result.training_loss),
        "first_logged_loss": losses[0] if losses else math.nan,
        "last_logged_loss": losses[-1] if losses else math.nan,
        "steps": int(trainer.state.global_step),
        "examples": len(data.records),
        "resumed_from": resume or "",
        "wall_data_s": round(t_data, 2),
        "wall_train_s": round(t_train, 2),
        "wall_s": round(time.time() - t0, 2),
    }
    if router:
        metrics["router_load_max_over_mean"] = router[-1]["router/load_max_over_mean"]
        metrics["aux_loss"] = router[-1].get("aux_loss", math.nan)
    for s in data.report["sources"]:
        metrics[f"count/{s['name']}"] = s["achieved"]
    if data.report["safety_filter"]["enabled"]:  # RAISE filter counts, for the pipeline report
        per_source = data.report["safety_filter"]["by_source"].values()
        metrics["safety_dropped"] = sum(sum(c["dropped_by_reason"].values()) for c in per_source)
        metrics["safety_pii_scrubbed"] = sum(sum(c["pii_scrubbed"].values()) for c in per_source)
    if main:
        atomic_write_json(ctx.stage_dir / "train_log.json", trainer.state.log_history)
    return StageResult(
        outputs={"model": "model", "dataset": "dataset.jsonl", "card": "card.md", "report": "mixture_report.json"},
        metrics=metrics,
    )
