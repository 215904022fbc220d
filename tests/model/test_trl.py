"""TRL smoke steps: SFTTrainer (padding-free packing), RewardTrainer and DPOTrainer accept the model.

One optimizer step each on the tiny model and the tiny tokenizer, CPU, fp32; each asserts that
parameters moved (TRL's own test style) and that the MoE aux loss reached the trainer.
"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from alignment.model import YiLightningForSequenceClassification
from tests.fixtures_model import build_tiny_config, build_tiny_model


trl = pytest.importorskip("trl")


def _args(cls, tmp_path, **kw):
    return cls(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, bf16=False, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-2, max_length=64, **kw,
    )


def _ids(tok):
    return dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)


PREFS = [{"prompt": "What is 2+3?", "chosen": " 5", "rejected": " 7"}, {"prompt": "Say hi", "chosen": " hi", "rejected": " no"}]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(model, before):
    return [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]


def test_sft_trainer_padding_free_step(tiny_tokenizer, tmp_path):
    model = build_tiny_model(**_ids(tiny_tokenizer)).train()
    ds = Dataset.from_list([{"prompt": "What is 2+3?", "completion": " 5"}, {"prompt": "Say hi", "completion": " hi there"}] * 2)
    trainer = trl.SFTTrainer(
        model=model, args=_args(trl.SFTConfig, tmp_path, packing=True), train_dataset=ds, processing_class=tiny_tokenizer
    )
    before = _snapshot(model)
    trainer.train()
    log = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(log["loss"]))
    assert log["aux_loss"] > 0  # TRL saw the router logits (output_router_logits hook)
    assert "model.layers.1.mlp.experts.gate_up_proj" in _moved(model, before)


def test_reward_trainer_step(tiny_tokenizer, tmp_path):
    model = YiLightningForSequenceClassification(build_tiny_config(num_labels=1, **_ids(tiny_tokenizer)))
    trainer = trl.RewardTrainer(
        model=model, args=_args(trl.RewardConfig, tmp_path), train_dataset=Dataset.from_list(PREFS * 2),
        processing_class=tiny_tokenizer,
    )
    before = _snapshot(model)
    trainer.train()
    assert "score.weight" in _moved(model, before)


def test_dpo_trainer_step_with_reference_from_path(tiny_tokenizer, tmp_path):
    # ref_model=None makes TRL rebuild the reference from the checkpoint path through the Auto classes
    # (STACK.md pitfall 2: needs auto_map / registration).
    build_tiny_model(**_ids(tiny_tokenizer)).save_pretrained(tmp_path / "policy")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    trainer = trl.DPOTrainer(
        model=model, ref_model=None, args=_args(trl.DPOConfig, tmp_path), train_dataset=Dataset.from_list(PREFS * 2),
        processing_class=tiny_tokenizer,
    )
    before = _snapshot(model)
    trainer.train()
    assert type(trainer.ref_model).__name__ == "YiLightningForCausalLM"
    assert _moved(model, before)
    assert trainer.state.log_history[0]["aux_loss"] > 0
