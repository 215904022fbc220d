"""Offline DPO over TRL's ``DPOTrainer``, and the DPO step that online DPO reuses each round.

The reference model is never resident: ``precompute_ref_log_probs=True`` with ``ref_model=None``
makes TRL run the *initial* policy once over every pair before the first optimizer step, write
``ref_chosen_logps`` / ``ref_rejected_logps`` into an Arrow cache file keyed by (dataset
fingerprint, hash of the weights), and train against those numbers. The cache lives in the
stage folder, so a resumed stage reuses it instead of recomputing.

MoE load balancing (``DPOTrainArgs.aux_loss``): TRL's fused LM head calls the decoder backbone
directly and adds only a Mixtral-style Switch loss rebuilt from router logits, so the model's own
loss (a_ST*L_ST + a_EP*L_EP + a_PEP*L_PEP over the routing actually used, dynamic top-p
included) would be lost. ``aux_loss="model"`` (default) taps the backbone's ``aux_loss`` output
with a forward hook and adds it to the DPO loss in :class:`MoEDPOTrainer` (TRL's own term is
then switched off, so nothing is counted twice); it is logged as ``moe_aux_loss``.
``"trl"`` keeps TRL's term (``router_aux_loss_coef``), ``"off"`` adds nothing.

Preference files are JSONL, one pair per line::

    {"prompt": "..." | [{"role": "user", "content": "..."}],
     "chosen": "..." | [{"role": "assistant", "content": "..."}],
     "rejected": same as chosen, ...any other keys are kept but unused}

Run as a pipeline stage (recipes/stage/dpo.yaml; inputs ``policy`` = a stage with a ``model``
output or a model dir, ``pairs`` = a stage with a ``pairs`` output or a JSONL path)::

    yialign stages=[dpo] stage.dpo.train.beta=0.1

Tests: ``python -m pytest -q tests/train/test_dpo.py``.
"""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from alignment.errors import ConfigError, DataError
from alignment.stage_contract import StageContext, StageResult
from alignment.train.args import TrainArgs

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
AUX_LOSS_MODES = ("model", "trl", "off")


# --------------------------------------------------------------------------- config


@dataclass
class DPOTrainArgs(TrainArgs):
    """The DPO optimisation settings (a subset of ``trl.DPOConfig``, with this project's defaults): the
    training fields of :class:`alignment.train.args.TrainArgs` plus these.

    The report does not disclose its DPO beta or learning rate; the defaults are ours.

    Args:
        beta (`float`, *optional*, defaults to `0.1`): KL strength of the DPO loss.
        loss_type (`list[str]`, *optional*, defaults to `["sigmoid"]`): TRL loss types, combined with
            ``loss_weights`` (e.g. ``["sigmoid", "sft"]`` for DPO + NLL on chosen).
        loss_weights (`list[float] | None`, *optional*): one weight per loss type; ``None`` = all 1.
        learning_rate, warmup_ratio, gradient_accumulation_steps, gradient_checkpointing, save_steps:
            :class:`~alignment.train.args.TrainArgs` fields with DPO defaults (`5e-7`, `0.1`, `8`,
            `False`, `200`); the others keep the TrainArgs defaults.
        max_length (`int | None`, *optional*, defaults to `4096`): prompt + completion tokens kept.
        aux_loss (`str`, *optional*, defaults to `"model"`): which MoE load-balancing loss joins the DPO
            loss: ``model`` (the backbone's own weighted ``aux_loss``), ``trl`` (TRL's Switch loss
            times ``router_aux_loss_coef``) or ``off``.
        router_aux_loss_coef (`float | None`, *optional*): ``aux_loss="trl"`` only: weight of TRL's
            term; ``None`` takes the model config's ``router_aux_loss_coef``.
        model_dtype (`str`, *optional*, defaults to `"float32"`): dtype the policy is loaded in
            (``float32`` master weights with bf16 autocast is the safe default).
        precompute_ref_batch_size (`int | None`, *optional*): batch size of the one reference pass;
            ``None`` = the training batch size.
    """

    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    max_length: int | None = 4096
    aux_loss: str = "model"
    router_aux_loss_coef: float | None = None
    model_dtype: str = "float32"
    precompute_ref_batch_size: int | None = None
    # TrainArgs fields whose defaults differ for DPO
    learning_rate: float = 5e-7
    warmup_ratio: float = 0.1
    gradient_accumulation_steps: int = 8
    gradient_checkpointing: bool = False
    save_steps: int = 200


@dataclass
class DPOStageConfig:
    """Offline DPO stage (``alignment.train.dpo.run``). Inputs: ``policy`` (model) and ``pairs`` (JSONL).

    Args:
        train (`DPOTrainArgs`): optimisation settings.
        max_pairs (`int | None`, *optional*): use only the first this many pairs (``None`` = all).
    """

    train: DPOTrainArgs = field(default_factory=DPOTrainArgs)
    max_pairs: int | None = None


# --------------------------------------------------------------------------- data


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def normalize_pair(row: dict, where: str) -> dict:
    """Check one preference row and return ``{prompt, chosen, rejected}`` in TRL's format.

    A string completion after a chat prompt becomes one assistant message, so the pair is
    tokenized through the chat template exactly like the prompt was at sampling time.
    """
    for key in PREFERENCE_KEYS:
        if key not in row:
            raise DataError(f"{where}: missing key '{key}' (a preference row needs {list(PREFERENCE_KEYS)})")
    prompt = row["prompt"]
    if not (isinstance(prompt, str) or _is_messages(prompt)) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty string or a list of {{role, content}} messages")
    out = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        value = row[key]
        if isinstance(value, str):
            value = [{"role": "assistant", "content": value}] if _is_messages(prompt) else value
        elif not _is_messages(value) or isinstance(prompt, str):
            raise DataError(f"{where}: '{key}' must be a string, or assistant messages after a chat prompt")
        out[key] = value
    if out["chosen"] == out["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical")
    return out


def read_preference_jsonl(path: str | Path, max_pairs: int | None = None) -> list[dict]:
    """Read and validate a preference JSONL; errors (:class:`alignment.errors.DataError`) name the file and line."""
    from alignment.artifacts import iter_jsonl
    path = Path(path)
    rows, kind = [], None
    for where, raw in iter_jsonl(path):
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        row = normalize_pair(raw, where)
        row_kind = "chat" if _is_messages(row["prompt"]) else "text"
        if kind is None:
            kind = row_kind
        elif row_kind != kind:
            # Arrow needs one column type; mixing would also tokenize half the pairs without the template.
            raise DataError(f"{where}: {row_kind} prompt in a file whose first pair has a {kind} prompt")
        rows.append(row)
        if max_pairs is not None and len(rows) >= max_pairs:
            break
    if not rows:
        raise DataError(f"{path}: no preference pairs")
    return rows


# --------------------------------------------------------------------------- training


def dpo_config(args: DPOTrainArgs, output_dir: str | Path, device: str, seed: int):
    """Build the ``trl.DPOConfig`` for one DPO run (reference log-probs always precomputed)."""
    from trl import DPOConfig

    if args.aux_loss not in AUX_LOSS_MODES:
        raise ConfigError(f"train.aux_loss must be one of {AUX_LOSS_MODES}, got {args.aux_loss!r}")
    return DPOConfig(
        **args.hf_kwargs(str(output_dir), device, seed),
        beta=args.beta,
        loss_type=list(args.loss_type),
        loss_weights=None if args.loss_weights is None else list(args.loss_weights),
        max_length=args.max_length,
        # With our own aux loss (or none), TRL's Switch-loss term is switched off so it is not added twice.
        router_aux_loss_coef=args.router_aux_loss_coef if args.aux_loss == "trl" else 0.0,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.precompute_ref_batch_size,
    )


def _moe_dpo_trainer_class():
    """``MoEDPOTrainer``, defined lazily so importing this module does not import TRL (~7 s)."""
    from trl import DPOTrainer

    from alignment.train.aux_loss import MoEAuxLossMixin

    class MoEDPOTrainer(MoEAuxLossMixin, DPOTrainer):
        """``DPOTrainer`` whose loss also carries the MoE backbone's own load-balancing loss.

        A forward hook on the backbone (``model.base_model``, which TRL's fused LM head calls)
        keeps the ``aux_loss`` of the latest forward; :meth:`compute_loss` adds it through the
        mixin, which logs it as ``moe_aux_loss``. Only public Trainer methods are overridden
        (``compute_loss``; ``log`` in the mixin).
        """

        aux_log_key = "moe_aux_loss"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._moe_aux = None
            backbone = self.accelerator.unwrap_model(self.model).base_model
            self._moe_hook = backbone.register_forward_hook(self._keep_aux_loss)

        def remove_hook(self):
            """Detach from the model (it outlives the trainer: the next round samples from it)."""
            self._moe_hook.remove()

        def _keep_aux_loss(self, module, inputs, output):
            self._moe_aux = output.get("aux_loss")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self._moe_aux = None
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self._moe_aux is None:
                raise ValueError(
                    f"aux_loss='model' needs a backbone that returns `aux_loss` ({type(self.model).__name__} "
                    "does not); use train.aux_loss='trl' or 'off'"
                )
            if return_outputs:
                loss, outputs = result
                return self.add_aux_loss(loss, self._moe_aux, model.training), outputs
            return self.add_aux_loss(result, self._moe_aux, model.training)

    return MoEDPOTrainer


def summarize_log_history(history: Sequence[dict]) -> dict[str, float]:
    """Turn ``trainer.state.log_history`` into flat stage metrics (means over the logged windows)."""

    def mean(key: str) -> float:
        vals = [h[key] for h in history if key in h and math.isfinite(h[key])]
        return sum(vals) / len(vals) if vals else float("nan")

    out = {
        "dpo_reward_accuracy": mean("rewards/accuracies"),
        "dpo_reward_margin": mean("rewards/margins"),
        "dpo_reward_chosen": mean("rewards/chosen"),
        "dpo_reward_rejected": mean("rewards/rejected"),
        "dpo_aux_loss": mean("moe_aux_loss") if any("moe_aux_loss" in h for h in history) else mean("aux_loss"),
    }
    final = [h for h in history if "train_loss" in h]
    out["dpo_loss"] = final[-1]["train_loss"] if final else mean("loss")
    # The last logged window says where training ended, the mean says how it went.
    last_acc = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    out["dpo_reward_accuracy_last"] = last_acc[-1] if last_acc else float("nan")
    return out


def drop_overlong_prompts(rows: list[dict], tokenizer, max_length: int | None) -> list[dict]:
    """Drop pairs whose prompt alone fills ``max_length`` (no completion token would be left to train).

    TRL drops them silently and then fails on an empty dataset; here the count is reported and an
    all-dropped set is a clear error naming the setting to raise.
    """
    if max_length is None:
        return rows
    from alignment.sampling.tokens import encode_prompts

    lengths = [len(ids) for ids in encode_prompts(tokenizer, [r["prompt"] for r in rows])]
    kept = [r for r, n in zip(rows, lengths) if n < max_length]
    if not kept:
        raise ConfigError(f"every pair's prompt is at least train.max_length={max_length} tokens long "
                         f"(shortest: {min(lengths)}); raise train.max_length")
    if len(kept) < len(rows):
        print(f"dpo: dropped {len(rows) - len(kept)} of {len(rows)} pairs whose prompt fills max_length={max_length}")
    return kept


def train_dpo(
    model,
    tokenizer,
    pairs: list[dict],
    args: DPOTrainArgs,
    output_dir: str | Path,
    *,
    device: str = "cpu",
    seed: int = 0,
    resume_from: str | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on preference ``pairs`` with TRL's DPOTrainer; return metrics.

    ``model`` is both the policy and, before the first step, the reference: its log-probs over
    every pair are computed once and cached under ``output_dir/ref_cache``; no second copy of
    the model is ever built. ``output_dir`` also receives trainer checkpoints; ``resume_from``
    continues from one (the reference cache is found again because the initial weights and the
    pairs hash the same).
    """
    from datasets import Dataset
    from trl import DPOTrainer

    from alignment.artifacts import atomic_write_text
    from alignment.train.profile import profile_callbacks

    output_dir = Path(output_dir)
    cache_dir = output_dir / "ref_cache"
    data_file = cache_dir / "pairs.jsonl"
    rows = [normalize_pair(r, f"pair {i}") for i, r in enumerate(pairs)]
    n_given = len(rows)
    rows = drop_overlong_prompts(rows, tokenizer, args.max_length)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    config = dpo_config(args, output_dir, device, seed)
    # Rewrite only on change: the datasets fingerprint (and so the reference cache key) includes
    # the file's mtime, and a resumed run must find the cache of the first attempt. Under a
    # distributed launch rank 0 writes first and the others, finding the same text, read its file
    # (every rank must fingerprint the same file, or their reference caches would differ).
    with config.main_process_first(local=False, desc="DPO pairs file"):
        if not data_file.is_file() or data_file.read_text(encoding="utf-8") != text:
            atomic_write_text(data_file, text)
    # A file-backed dataset puts TRL's tokenization and reference-log-prob caches next to it (in
    # the stage folder) instead of a temp dir that vanishes with the process.
    dataset = Dataset.from_json(str(data_file), cache_dir=str(cache_dir / "hf"))
    if tokenizer.pad_token is None:
        raise ValueError("the policy's tokenizer has no pad token (DPO batches need one)")

    started = time.perf_counter()
    trainer_cls = _moe_dpo_trainer_class() if args.aux_loss == "model" else DPOTrainer
    trainer = trainer_cls(model=model, ref_model=None, args=config, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=profile_callbacks())
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # the caller saves `model` from rank 0 alone, which needs whole (DDP) weights, not shards
        raise ValueError("DPO under an FSDP/ZeRO-3 launch is not supported yet; use accelerate=ddp (or cpu_ddp)")
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if args.aux_loss == "model":
            trainer.remove_hook()
    metrics = summarize_log_history(trainer.state.log_history)
    metrics["dpo_steps"] = trainer.state.global_step
    metrics["dpo_pairs"] = len(rows)
    metrics["dpo_pairs_dropped_long"] = n_given - len(rows)
    metrics["dpo_train_s"] = round(time.perf_counter() - started, 3)
    # Drop the trainer's optimizer state and accelerator references before the caller moves on
    # (the next round's sampler must find the GPU free).
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return metrics


def load_policy(model_dir: str | Path, device: str, dtype: str = "float32"):
    """Load a causal-LM checkpoint and its tokenizer from a ``save_pretrained`` folder."""
    import alignment  # noqa: F401  (registers the yi_lightning model type with the Auto classes)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.checkpoints import check_model_dir

    model_dir = check_model_dir(model_dir, "policy")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{model_dir}: no tokenizer saved with the model ({e})") from None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return model.to(device), tokenizer


def save_policy(model, tokenizer, ctx: StageContext, key: str = "model") -> str:
    """``save_pretrained`` into a temp folder of the stage, then publish it atomically as ``key``."""
    tmp = ctx.tmp_dir(key)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return ctx.publish(tmp, key)


# --------------------------------------------------------------------------- stage


def run(cfg: DPOStageConfig, ctx: StageContext) -> StageResult:
    """Offline DPO stage: ``policy`` + ``pairs`` -> ``model``."""
    from alignment.artifacts import atomic_write_json, drop_timings

    pairs_path = ctx.input("pairs", "pairs")
    pairs = read_preference_jsonl(pairs_path, cfg.max_pairs)
    model, tokenizer = load_policy(ctx.input("policy", "model"), ctx.device, cfg.train.model_dtype)
    metrics = train_dpo(
        model, tokenizer, pairs, cfg.train, ctx.checkpoint_dir,
        device=ctx.device, seed=ctx.seed, resume_from=ctx.last_checkpoint(),
    )
    # Under a distributed launch the ranks hold the same weights after training (DDP); rank 0 writes.
    model_key = save_policy(model, tokenizer, ctx) if ctx.is_main_process else "model"
    if ctx.is_main_process:
        # no wall times in the published file: its hash is part of the next stage's input hash
        atomic_write_json(ctx.stage_dir / "metrics.json", {"config": asdict(cfg), "metrics": drop_timings(metrics)})
    return StageResult(outputs={"model": model_key, "metrics": "metrics.json"}, metrics=metrics)
