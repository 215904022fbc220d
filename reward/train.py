"""Bradley-Terry reward-model training through TRL's ``RewardTrainer``: one phase at a time.

The Yi-Lightning recipe trains its reward model in two phases (reward/runner.py chains them):

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
from alignment.train.args import LoopArgs, LoraSpec, OptimArgs, training_kwargs
from alignment.train.aux_loss import MoEAuxLossMixin
from alignment.train.losses import bradley_terry_loss
from alignment.train.profile import profile_callbacks
from reward.score import encode_conversation

__all__ = ["RewardPhase", "LoraSpec", "TrainSpec", "BradleyTerryTrainer", "load_reward_model", "tokenize_pairs",
           "train_phase"]


@dataclass
class RewardPhase(OptimArgs):
    """One training phase: which pairs, and the optimizer/schedule fields of
    :class:`alignment.train.args.OptimArgs` (learning rate, steps, batch, warm-up ...), set per phase.

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
    """

    sources: list[str] = field(default_factory=lambda: ["synth"])
    curate: bool = False
    min_gap: float = 0.5
    use_margin: bool = False
    max_pairs: int | None = None


@dataclass
class TrainSpec(LoopArgs):
    """Settings shared by both phases: the loop fields of :class:`alignment.train.args.LoopArgs`
    (bf16, gradient checkpointing, logging and checkpoint steps) plus these.

    Args:
        max_length (`int`, *optional*, defaults to `2048`): pairs with a longer side are dropped.
        eval_steps (`int`, *optional*, defaults to `0`): TRL held-out evaluation interval during training; 0 = only
            at the end of each phase; -1 = never (the stage still measures held-out accuracy at the end).
        seed (`int`, *optional*, defaults to `0`).
    """

    max_length: int = 2048
    eval_steps: int = 0
    seed: int = 0


class BradleyTerryTrainer(MoEAuxLossMixin, RewardTrainer):
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
        # yi_lightning's aux_loss already carries its three balance coefficients (a_ST, a_EP, a_PEP);
        # None for dense models (e.g. a Llama reward model)
        loss = self.add_aux_loss(loss, outputs.get("aux_loss"), model.training)
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
    train_ds = tokenize_pairs(tokenizer, train_pairs, phase.use_margin)
    eval_ds = tokenize_pairs(tokenizer, eval_pairs, phase.use_margin) if eval_pairs else None
    # TRL drops pairs with a side over max_length; fail here, by name, rather than inside the trainer
    fits = sum(max(len(c), len(r)) <= spec.max_length for c, r in zip(train_ds["chosen_ids"], train_ds["rejected_ids"]))
    if fits == 0:
        need = min(max(len(c), len(r)) for c, r in zip(train_ds["chosen_ids"], train_ds["rejected_ids"]))
        raise ValueError(f"{phase_dir.name}: every training pair is longer than max_length={spec.max_length} "
                         f"tokens (the shortest needs {need}); raise train.max_length")
    args = RewardConfig(
        **training_kwargs(phase, spec, output_dir=str(phase_dir), device=device, seed=spec.seed),
        per_device_eval_batch_size=phase.per_device_train_batch_size,
        max_length=spec.max_length,
        eval_strategy="steps" if (eval_ds is not None and spec.eval_steps > 0) else "no",
        eval_steps=spec.eval_steps if spec.eval_steps > 0 else None,
    )
    trainer = BradleyTerryTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=tokenizer, peft_config=lora.peft_config("SEQ_CLS"),
                                  callbacks=profile_callbacks())
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
