"""One training-arguments schema for every trainer: optimizer, schedule, loop, LoRA.

The base, SFT, DPO and reward stages all drive a ``transformers.Trainer`` (plain, or TRL's SFT,
DPO and reward trainers). Their optimizer/schedule/logging fields are declared here once, and
:func:`training_kwargs` maps them to ``TrainingArguments`` keyword arguments once:

- :class:`OptimArgs`: how long and how fast (steps, epochs, batch, learning rate, schedule,
  warm-up, weight decay, clipping).
- :class:`LoopArgs`: precision, memory, logging and checkpoints of the loop.
- :class:`TrainArgs`: both; the base, SFT and DPO schemas inherit it, so recipe keys stay flat
  (``stage.sft_broad.learning_rate``, ``stage.dpo_r1.train.learning_rate``). The reward stage
  sets the optimizer per phase (``pretrain``/``finetune`` are :class:`OptimArgs`) and the loop
  once (``train`` is a :class:`LoopArgs`).
- :class:`LoraSpec`: the one LoRA option (causal LM or sequence classification).

A stage schema redeclares only the defaults it changes (TRL's ``DPOConfig`` does the same over
``TrainingArguments``), and its recipe YAML holds only the values that differ from those.

Warm-up has one name and one meaning everywhere: ``warmup_ratio``, a fraction of the optimizer
steps in [0, 1). It is passed as ``warmup_steps`` (transformers 5: a float below 1 is a share of
the total steps, rounded up).

Tests: ``python -m pytest -q tests/train/test_args.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from alignment.errors import ConfigError

# Keys that were renamed; a recipe still using the old name fails naming the new one.
RENAMED_KEYS = {"warmup_steps": "warmup_ratio (a fraction of the optimizer steps, in [0, 1))"}


@dataclass
class OptimArgs:
    """Optimizer and schedule.

    Args:
        num_train_epochs (`float`, *optional*, defaults to `1.0`): passes over the data (when
            ``max_steps`` is -1).
        max_steps (`int`, *optional*, defaults to `-1`): optimizer steps; -1 lets ``num_train_epochs`` decide.
        per_device_train_batch_size (`int`, *optional*, defaults to `8`): rows per device and micro-batch.
        gradient_accumulation_steps (`int`, *optional*, defaults to `1`): micro-batches per optimizer step.
        learning_rate (`float`, *optional*, defaults to `1e-5`): peak learning rate (AdamW).
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`): transformers scheduler name.
        warmup_ratio (`float`, *optional*, defaults to `0.03`): linear warm-up over this fraction of
            the optimizer steps, in [0, 1).
        weight_decay (`float`, *optional*, defaults to `0.0`): AdamW weight decay.
        max_grad_norm (`float`, *optional*, defaults to `1.0`): gradient clipping.
    """

    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class LoopArgs:
    """Precision, memory, logging and checkpoints of the training loop.

    Args:
        bf16 (`bool`, *optional*, defaults to `True`): bf16 autocast on CUDA (always off elsewhere).
        gradient_checkpointing (`bool`, *optional*, defaults to `True`): recompute activations.
        logging_steps (`int`, *optional*, defaults to `10`): log every this many steps.
        save_steps (`int`, *optional*, defaults to `500`): trainer checkpoint every this many steps
            (the resume granularity).
        save_total_limit (`int`, *optional*, defaults to `2`): trainer checkpoints kept.
    """

    bf16: bool = True
    gradient_checkpointing: bool = True
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2


@dataclass
class TrainArgs(LoopArgs, OptimArgs):
    """:class:`OptimArgs` and :class:`LoopArgs` in one flat block (the base, SFT and DPO schemas)."""

    def hf_kwargs(self, output_dir: str, device: str, seed: int) -> dict[str, Any]:
        """``TrainingArguments`` keyword arguments of these settings (see :func:`training_kwargs`)."""
        return training_kwargs(self, self, output_dir=output_dir, device=device, seed=seed)


def training_kwargs(optim: OptimArgs, loop: LoopArgs, *, output_dir: str, device: str, seed: int) -> dict[str, Any]:
    """Keyword arguments of ``transformers.TrainingArguments`` (or a TRL config) for one run.

    Stage-specific arguments (``max_length``, ``beta``, ``logging_first_step`` ...) are added by
    the caller. bf16 is used only on a CUDA device that supports it; ``device`` is the resolved
    device (``cpu``, ``cuda``, ``cuda:1``).
    """
    import torch

    on_cuda = str(device).startswith("cuda")
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=optim.num_train_epochs,
        max_steps=optim.max_steps,
        per_device_train_batch_size=optim.per_device_train_batch_size,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        learning_rate=optim.learning_rate,
        lr_scheduler_type=optim.lr_scheduler_type,
        warmup_steps=optim.warmup_ratio,  # transformers 5: a float < 1 is a share of the total steps
        weight_decay=optim.weight_decay,
        max_grad_norm=optim.max_grad_norm,
        # TRL's configs default to bf16=True, which fails on CPU (STACK.md pitfall 1).
        bf16=loop.bf16 and on_cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not on_cuda,
        gradient_checkpointing=loop.gradient_checkpointing,
        logging_steps=loop.logging_steps,
        save_strategy="steps",
        save_steps=loop.save_steps,
        save_total_limit=loop.save_total_limit,
        seed=seed,
        data_seed=seed,
        report_to=[],
        dataloader_num_workers=0,
    )


@dataclass
class LoraSpec:
    """Optional LoRA (peft). The stage merges the adapters into the weights it publishes.

    Args:
        enabled (`bool`, *optional*, defaults to `False`): train LoRA adapters instead of all weights.
        r (`int`, *optional*, defaults to `16`): adapter rank.
        alpha (`int`, *optional*, defaults to `32`): LoRA scaling numerator.
        dropout (`float`, *optional*, defaults to `0.05`): adapter dropout (0.0 with ``target_parameters``).
        target_modules (`list[str]`, *optional*): attention and dense/shared-expert projections by
            default; never ``all-linear`` (it would wrap the router gate, STACK.md pitfall 8).
        target_parameters (`list[str]`, *optional*): 3D routed-expert weights to adapt through
            peft's ``target_parameters`` (e.g. ``["experts.gate_up_proj", "experts.down_proj"]``);
            needs ``dropout: 0.0``.
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    target_parameters: Optional[list[str]] = None

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        """The ``peft.LoraConfig``, or None when LoRA is off.

        ``task_type="SEQ_CLS"`` (the reward model) also trains the new ``score`` head in full.
        """
        if not self.enabled:
            return None
        from peft import LoraConfig

        kwargs: dict[str, Any] = {}
        if self.target_parameters:
            if self.dropout != 0.0:
                # peft's ParamWrapper (LoRA on 3D expert weights) has no dropout path.
                raise ConfigError(f"lora.target_parameters needs lora.dropout: 0.0 (got {self.dropout})")
            kwargs["target_parameters"] = list(self.target_parameters)
        if task_type == "SEQ_CLS":
            kwargs["modules_to_save"] = ["score"]
        return LoraConfig(task_type=task_type, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), **kwargs)
