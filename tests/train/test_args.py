"""The one training-arguments schema (alignment/train/args.py) and the aux-loss mixin (aux_loss.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

from alignment.errors import ConfigError
from alignment.train.args import LoopArgs, LoraSpec, OptimArgs, TrainArgs, training_kwargs
from alignment.train.aux_loss import MoEAuxLossMixin, add_aux_loss
from alignment.train.pretrain import BaseConfig
from alignment.train.dpo import DPOTrainArgs
from alignment.train.sft import SFTStageConfig
from reward.train import RewardPhase, TrainSpec


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("schema, parts", [
    (BaseConfig, (OptimArgs, LoopArgs)),
    (SFTStageConfig, (OptimArgs, LoopArgs)),
    (DPOTrainArgs, (OptimArgs, LoopArgs)),
    (RewardPhase, (OptimArgs,)),   # the optimizer is set per reward phase ...
    (TrainSpec, (LoopArgs,)),      # ... and the loop once for both
])
def test_every_training_schema_reuses_the_one_schema(schema, parts):
    for part in parts:
        assert issubclass(schema, part) and _names(part) <= _names(schema)
    assert "warmup_steps" not in _names(schema)  # one warm-up name everywhere


@pytest.mark.parametrize("schema, changed", [
    # stage-specific defaults are the only redeclared fields (values as before the shared schema)
    (BaseConfig, dict(max_steps=1000, learning_rate=3e-4, warmup_ratio=0.05, weight_decay=0.1, bf16=False,
                      gradient_checkpointing=False, save_steps=200)),
    (SFTStageConfig, dict(num_train_epochs=2.0, per_device_train_batch_size=4, gradient_accumulation_steps=8)),
    (DPOTrainArgs, dict(learning_rate=5e-7, warmup_ratio=0.1, gradient_accumulation_steps=8,
                        gradient_checkpointing=False, save_steps=200)),
])
def test_stage_defaults(schema, changed):
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), {"model": {}} if schema is BaseConfig
                                              else {"mixture": {"name": "x"}} if schema is SFTStageConfig else {}))
    shared = TrainArgs()
    for name in _names(TrainArgs):
        assert getattr(cfg, name) == changed.get(name, getattr(shared, name)), name


def test_training_kwargs_warmup_is_a_ratio_of_the_steps():
    from transformers import TrainingArguments

    args = TrainArgs(max_steps=40, warmup_ratio=0.05, bf16=True)
    kwargs = args.hf_kwargs("/tmp/unused", "cpu", seed=3)
    assert kwargs["warmup_steps"] == 0.05 and kwargs["seed"] == kwargs["data_seed"] == 3
    assert kwargs["bf16"] is False and kwargs["use_cpu"] is True  # bf16 only on CUDA
    hf = TrainingArguments(**kwargs)
    assert hf.get_warmup_steps(40) == math.ceil(0.05 * 40) == 2  # what the base stage computed by hand


def test_training_kwargs_of_split_blocks_equal_the_flat_block():
    optim, loop = OptimArgs(learning_rate=2e-5, max_steps=7), LoopArgs(logging_steps=3)
    flat = TrainArgs(**dataclasses.asdict(optim), **dataclasses.asdict(loop))
    assert training_kwargs(optim, loop, output_dir="o", device="cpu", seed=1) == flat.hf_kwargs("o", "cpu", 1)


def test_old_warmup_key_fails_naming_the_new_one():
    from alignment.pipeline import PipelineError, build_stage_config

    block = OmegaConf.create({"_target_": "alignment.train.dpo.run", "train": {"warmup_steps": 0.1}})
    with pytest.raises(PipelineError, match=r"stage\.dpo\.train\.warmup_steps: unknown key.*renamed: use warmup_ratio"):
        build_stage_config("dpo", block)


def test_lora_spec_builds_causal_and_reward_configs():
    assert LoraSpec().peft_config() is None  # off by default
    causal = LoraSpec(enabled=True, r=4).peft_config()
    assert causal.task_type == "CAUSAL_LM" and not causal.modules_to_save
    rm = LoraSpec(enabled=True, dropout=0.0, target_parameters=["experts.down_proj"]).peft_config("SEQ_CLS")
    assert rm.task_type == "SEQ_CLS" and rm.modules_to_save == ["score"]  # the new head trains in full
    with pytest.raises(ConfigError, match="dropout"):
        LoraSpec(enabled=True, target_parameters=["experts.down_proj"]).peft_config()


class _Logger:
    """Stand-in for a Trainer: ``log`` records what reached it."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.lines: list[dict] = []

    def log(self, logs, start_time=None):
        self.lines.append(dict(logs))


class _Trainer(MoEAuxLossMixin, _Logger):
    pass


def test_aux_loss_mixin_adds_and_logs_means_per_mode():
    trainer = _Trainer()
    loss = torch.tensor(1.0)
    assert add_aux_loss(loss, None) is loss  # dense model: nothing added
    assert trainer.add_aux_loss(loss, torch.tensor(0.5, dtype=torch.bfloat16), True).dtype == torch.float32
    trainer.add_aux_loss(loss, torch.tensor(0.25), True)
    trainer.add_aux_loss(loss, torch.tensor(2.0), False)
    trainer.log({"loss": 1.0})
    assert trainer.lines[-1] == {"loss": 1.0, "aux_loss": 0.375}
    trainer.model.eval()
    trainer.log({"eval_loss": 1.0})
    assert trainer.lines[-1] == {"eval_loss": 1.0, "eval_aux_loss": 2.0}
    trainer.log({"eval_loss": 1.0})
    assert trainer.lines[-1] == {"eval_loss": 1.0}  # means are per log window
    # tensors are kept as tensors until the log line (no host sync per step); floats mix in
    trainer.model.train()
    trainer.log_moe("x", torch.tensor(1.0), True)
    trainer.log_moe("x", 2.0, True)
    trainer.log_moe("x", torch.tensor([3.0]), True)
    assert isinstance(trainer.moe_logs["train"]["x"][0], torch.Tensor)
    trainer.log({})
    assert trainer.lines[-1] == {"x": 2.0}


def test_a_default_left_out_of_a_stage_yaml_is_overridable_and_hashed():
    """Stage YAMLs list only deltas: ``stage.<name>.<field>=v`` still works for a field they leave
    out, and the stage's config hash covers the typed config (a changed default reruns it)."""
    from alignment.pipeline import compose, plan

    def hashes(*overrides):
        return {p.name: (p.config_hash, p.cfg) for p in plan(compose(["pipeline=tiny_cpu", *overrides]))}

    base = hashes()
    assert "report_to" not in compose(["pipeline=tiny_cpu"]).stage.sft_broad  # left to the schema default
    changed = hashes("stage.sft_broad.report_to=tensorboard", "stage.reward.train.eval_steps=5")
    assert changed["sft_broad"][1].report_to == "tensorboard" and changed["reward"][1].train.eval_steps == 5
    assert changed["sft_broad"][0] != base["sft_broad"][0] and changed["base"][0] == base["base"][0]
    assert hashes("stage.sft_broad.report_to=none")["sft_broad"][0] == base["sft_broad"][0]  # the default, written out
