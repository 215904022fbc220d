"""Bradley-Terry reward-model training through TRL's ``RewardTrainer``: one phase at a time.

The Yi-Lightning recipe trains its reward model in two phases (reward/stage.py chains them):

1. preference-model pre-training on broad pairs (every pair as is);
2. fine-tuning on curated pairs (per prompt the highest- vs the lowest-scored answer, small gaps
   dropped; :func:`reward.pairs.curate_pairs`).

Each phase here is: tokenize pairs with :func:`reward.score.encode_conversation` (the scorer's own
encoding, so train and inference agree) -> ``BradleyTerryTrainer`` (TRL's ``RewardTrainer`` whose
``compute_loss`` uses ``alignment.train.losses.bradley_terry_loss`` and adds the MoE load-balance
loss the model returns) -> optional LoRA merged back -> ``save_pretrained`` into ``<phase dir>/final``.
Trainer checkpoints go to ``<phase dir>/checkpoint-<step>``; a rerun resumes from the newest one, and
a phase whose ``final`` folder exists is skipped.

Used from Python (the stage runner does this)::

    from reward.train import RewardPhase, LoraSpec, TrainSpec, train_phase, load_reward_model
    model, tok = load_reward_model("runs/tiny_cpu/sft_hard/model")
    model, metrics = train_phase(model, tok, train_pairs, eval_pairs, RewardPhase(max_steps=50),
                                 TrainSpec(), LoraSpec(), "runs/x/reward/checkpoints/pretrain", device="cpu")
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from alignment.checkpoints import last_good_checkpoint
from alignment.train.losses import bradley_terry_loss
from reward.score import encode_conversation

__all__ = ["RewardPhase", "LoraSpec", "TrainSpec", "BradleyTerryTrainer", "load_reward_model", "tokenize_pairs",
           "train_phase"]


@dataclass
class RewardPhase:
    """One training phase.

    Args:
        sources (`list[str]`, *optional*, defaults to `["synth"]`): pair sources: a stage input name
            (its ``pairs`` output), a JSONL/JSON file, a folder, or a hub dataset id.
        curate (`bool`, *optional*, defaults to `False`): build highest-vs-lowest pairs per prompt
            (phase 2) instead of using every pair (phase 1).
        min_gap (`float`, *optional*, defaults to `0.5`): with ``curate``, prompts whose best and worst
            scores differ by less are dropped.
        use_margin (`bool`, *optional*, defaults to `False`): pass the score gap as the Bradley-Terry
            margin (Llama-2 style) where both scores are known.
        max_pairs (`int`, *optional*): cap on pairs read per source (the first ones).
        max_steps (`int`, *optional*, defaults to `-1`): optimizer steps; -1 trains ``num_train_epochs``.
        num_train_epochs (`float`, *optional*, defaults to `1.0`).
        learning_rate (`float`, *optional*, defaults to `1e-5`).
        per_device_train_batch_size (`int`, *optional*, defaults to `8`): pairs per device step.
        gradient_accumulation_steps (`int`, *optional*, defaults to `1`).
        warmup_ratio (`float`, *optional*, defaults to `0.03`).
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`).
        weight_decay (`float`, *optional*, defaults to `0.0`).
    """

    sources: list[str] = field(default_factory=lambda: ["synth"])
    curate: bool = False
    min_gap: float = 0.5
    use_margin: bool = False
    max_pairs: int | None = None
    max_steps: int = -1
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-5
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0


@dataclass
class LoraSpec:
    """LoRA on the reward model (PEFT ``task_type="SEQ_CLS"``; the ``score`` head is trained in full).

    Args:
        enabled (`bool`, *optional*, defaults to `False`).
        r (`int`, *optional*, defaults to `16`).
        alpha (`int`, *optional*, defaults to `32`).
        dropout (`float`, *optional*, defaults to `0.0`).
        target_modules (`list[str]`, *optional*, defaults to attention + dense/shared-expert projections):
            named ``nn.Linear`` modules (``"all-linear"`` would also wrap the MoE router gate, which should
            stay put).
        target_parameters (`list[str]`, *optional*): 3D routed-expert weights adapted through peft's
            ``target_parameters``, e.g. ``["experts.gate_up_proj", "experts.down_proj"]``.
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    target_parameters: list[str] | None = None

    def build(self):
        from peft import LoraConfig

        extra = {"target_parameters": list(self.target_parameters)} if self.target_parameters else {}
        return LoraConfig(task_type="SEQ_CLS", r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), modules_to_save=["score"], **extra)


@dataclass
class TrainSpec:
    """Settings shared by both phases.

    Args:
        max_length (`int`, *optional*, defaults to `2048`): pairs with a longer side are dropped.
        bf16 (`bool`, *optional*, defaults to `True`): bf16 mixed precision (turned off on CPU).
        gradient_checkpointing (`bool`, *optional*, defaults to `True`).
        logging_steps (`int`, *optional*, defaults to `10`).
        save_steps (`int`, *optional*, defaults to `500`): trainer checkpoint interval (resume points).
        save_total_limit (`int`, *optional*, defaults to `2`).
        eval_steps (`int`, *optional*, defaults to `0`): TRL held-out evaluation interval during training; 0 = only
            at the end of each phase; -1 = never (the stage still measures held-out accuracy at the end).
        seed (`int`, *optional*, defaults to `0`).
    """

    max_length: int = 2048
    bf16: bool = True
    gradient_checkpointing: bool = True
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    eval_steps: int = 0
    seed: int = 0


class BradleyTerryTrainer(RewardTrainer):
    """TRL's ``RewardTrainer`` with the project's Bradley-Terry loss plus the MoE load-balance loss.

    TRL's own ``compute_loss`` computes ``-logsigmoid(r_c - r_r [- margin])`` but drops the model's router
    aux loss, so an MoE reward model would train with its routers unbalanced (DESIGN.md: "the aux loss
    must also reach the loss in SFT, RM and DPO training"). ``compute_loss`` is the hook the Trainer docs
    invite subclasses to override; we call TRL's version for the forward pass and its metrics
    (accuracy, margin, reward range) and replace only the loss.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        margin = inputs.pop("margin", None)
        _, outputs = super().compute_loss(model, inputs, return_outputs=True)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = bradley_terry_loss(chosen, rejected, margin)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen.float() + rejected.float()) ** 2)
        aux = outputs.get("aux_loss")  # None for dense models (e.g. a Llama reward model)
        if aux is not None:
            # yi_lightning's aux_loss already carries its three balance coefficients (a_ST, a_EP, a_PEP)
            loss = loss + aux.to(loss.dtype)
            mode = "train" if model.training else "eval"
            self._metrics[mode]["aux_loss"].append(float(aux.detach()))
        return (loss, outputs) if return_outputs else loss


def load_reward_model(init: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A ``num_labels=1`` sequence-classification model (+ tokenizer) from a causal-LM or RM folder.

    Starting from the SFT policy, the ``score`` head is new (random) and ``lm_head`` is unused; those two
    load messages are expected and silenced the way TRL does.
    """
    import alignment.model  # noqa: F401  (registers yi_lightning with the Auto classes)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from alignment.checkpoints import check_model_dir

    init = check_model_dir(init, "reward model init")
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(init)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def tokenize_pairs(tokenizer, pairs: list[dict], use_margin: bool = False) -> Dataset:
    """Pairs -> a TRL-ready dataset with ``chosen_ids`` / ``rejected_ids`` (and ``margin``)."""
    cols: dict[str, list] = {"chosen_ids": [], "rejected_ids": []}
    if use_margin:
        cols["margin"] = []
    for p in pairs:
        cols["chosen_ids"].append(encode_conversation(tokenizer, p["prompt"], p["chosen"]))
        cols["rejected_ids"].append(encode_conversation(tokenizer, p["prompt"], p["rejected"]))
        if use_margin:
            known = p["chosen_score"] is not None and p["rejected_score"] is not None
            cols["margin"].append(float(p["chosen_score"] - p["rejected_score"]) if known else 0.0)
    return Dataset.from_dict(cols)


def _save_final(model, tokenizer, final: Path) -> None:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    from alignment.artifacts import atomic_replace_dir

    atomic_replace_dir(tmp, final)


def train_phase(model, tokenizer, train_pairs: list[dict], eval_pairs: list[dict], phase: RewardPhase,
                spec: TrainSpec, lora: LoraSpec, phase_dir: str | os.PathLike, device: str = "cpu"):
    """Train one phase; returns (trained model, metrics).

    Resumes from the newest ``checkpoint-*`` in ``phase_dir``; if ``phase_dir/final`` exists the phase
    already finished and its model is loaded instead of training again. LoRA adapters are merged into the
    weights at the end, so the next phase and the saved model are a plain sequence-classification model.

    Metrics: ``train_loss``, ``steps``, ``train_pairs``, and ``eval_accuracy`` / ``eval_loss`` (TRL's
    held-out evaluation) when ``eval_pairs`` is not empty.
    """
    phase_dir = Path(phase_dir)
    final = phase_dir / "final"
    if (final / "config.json").exists():
        model, tokenizer = load_reward_model(final, dtype=model.dtype)
        return model, {"resumed_final": 1}
    if not train_pairs:
        raise ValueError(f"{phase_dir.name}: no training pairs (check the phase's sources and min_gap)")
    on_cpu = device == "cpu"
    train_ds = tokenize_pairs(tokenizer, train_pairs, phase.use_margin)
    eval_ds = tokenize_pairs(tokenizer, eval_pairs, phase.use_margin) if eval_pairs else None
    # TRL drops pairs with a side over max_length; fail here, by name, rather than inside the trainer
    fits = sum(max(len(c), len(r)) <= spec.max_length for c, r in zip(train_ds["chosen_ids"], train_ds["rejected_ids"]))
    if fits == 0:
        need = min(max(len(c), len(r)) for c, r in zip(train_ds["chosen_ids"], train_ds["rejected_ids"]))
        raise ValueError(f"{phase_dir.name}: every training pair is longer than max_length={spec.max_length} "
                         f"tokens (the shortest needs {need}); raise train.max_length")
    args = RewardConfig(
        output_dir=str(phase_dir),
        max_steps=phase.max_steps,
        num_train_epochs=phase.num_train_epochs,
        learning_rate=phase.learning_rate,
        per_device_train_batch_size=phase.per_device_train_batch_size,
        per_device_eval_batch_size=phase.per_device_train_batch_size,
        gradient_accumulation_steps=phase.gradient_accumulation_steps,
        warmup_steps=phase.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=phase.lr_scheduler_type,
        weight_decay=phase.weight_decay,
        max_length=spec.max_length,
        bf16=spec.bf16 and not on_cpu,
        use_cpu=on_cpu,
        gradient_checkpointing=spec.gradient_checkpointing,
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        eval_strategy="steps" if (eval_ds is not None and spec.eval_steps > 0) else "no",
        eval_steps=spec.eval_steps if spec.eval_steps > 0 else None,
        seed=spec.seed,
        report_to=[],
        dataloader_num_workers=0,
    )
    trainer = BradleyTerryTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=tokenizer, peft_config=lora.build() if lora.enabled else None)
    last = last_good_checkpoint(phase_dir)
    out = trainer.train(resume_from_checkpoint=last)
    metrics = {"train_loss": float(out.training_loss), "steps": int(out.global_step),
               "train_pairs": fits, "dropped_long_pairs": len(train_ds) - fits}
    if eval_ds is not None and spec.eval_steps >= 0:
        ev = trainer.evaluate()
        metrics.update({"eval_accuracy": float(ev["eval_accuracy"]), "eval_loss": float(ev["eval_loss"])})
    model = trainer.model
    if lora.enabled:
        model = model.merge_and_unload()
    if not math.isfinite(metrics["train_loss"]):
        raise FloatingPointError(f"{phase_dir.name}: training loss is {metrics['train_loss']}")
    if trainer.is_world_process_zero():  # one writer under a distributed (accelerate) launch
        _save_final(model, tokenizer, final)
    trainer.accelerator.wait_for_everyone()
    return model, metrics
