"""Reward-model training: Bradley-Terry loss math, learning a synthetic preference, resume, LoRA.

Run: python -m pytest -q tests/reward/test_train.py
"""

from __future__ import annotations

import math

import pytest
import torch

from alignment.train.losses import bradley_terry_loss
from reward.score import RewardScorer
from reward.train import BradleyTerryTrainer, LoraSpec, RewardPhase, TrainSpec, load_reward_model, train_phase
from tests.reward.conftest import echo_pairs, tiny_rm


@pytest.mark.parametrize("chosen, rejected, margin, want", [
    (2.0, 0.0, None, math.log1p(math.exp(-2.0))),   # -log sigmoid(2)
    (0.0, 0.0, None, math.log(2.0)),                # a tie costs log 2
    (0.0, 2.0, None, math.log1p(math.exp(2.0))),    # wrong order: large loss
    (3.0, 1.0, 2.0, math.log(2.0)),                 # the margin eats the whole gap
])
def test_bradley_terry_values(chosen, rejected, margin, want):
    got = bradley_terry_loss(torch.tensor([chosen]), torch.tensor([rejected]), margin)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_trainer_loss_is_shared_bt_plus_moe_aux(tiny_tokenizer, tmp_path):
    """BradleyTerryTrainer.compute_loss == bradley_terry_loss(chosen, rejected, margin) + the model's aux loss."""
    from trl import RewardConfig

    from reward.train import tokenize_pairs

    model = tiny_rm(tiny_tokenizer)
    pairs = echo_pairs(4, seed=1)
    ds = tokenize_pairs(tiny_tokenizer, pairs, use_margin=True)
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                        gradient_checkpointing=False, max_length=64)
    trainer = BradleyTerryTrainer(model=model, args=args, train_dataset=ds, processing_class=tiny_tokenizer)
    batch = trainer.data_collator([ds[i] for i in range(4)])
    assert batch["margin"].tolist() == [1.0] * 4
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        chosen, rejected = out.logits.squeeze(-1).chunk(2)
        want = bradley_terry_loss(chosen, rejected, batch["margin"]) + out.aux_loss
        got = trainer.compute_loss(model, dict(batch))
    assert out.aux_loss.item() > 0  # the MoE layer really contributes a balance term
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert [float(v) for v in trainer.moe_logs["train"]["aux_loss"]] == [pytest.approx(out.aux_loss.item(), rel=1e-5)]


def test_rm_learns_echo_preference(trained_rm, echo_task):
    model, tok, init_acc, metrics, _ = trained_rm
    _, held = echo_task
    acc, chosen, rejected = RewardScorer(model, tok).pairwise_accuracy(held)
    assert init_acc < 0.7, "the untrained model should be near chance"
    assert acc >= 0.8, f"held-out pairwise accuracy {acc:.3f} after training (chance 0.5, init {init_acc:.3f})"
    assert metrics["steps"] == 80 and metrics["eval_accuracy"] >= 0.8
    assert sum(chosen) / len(chosen) > sum(rejected) / len(rejected)


def test_resume_from_checkpoint_and_final(trained_rm, echo_task, tiny_tokenizer):
    model, tok, _, _, phase_dir = trained_rm
    _, held = echo_task
    assert (phase_dir / "checkpoint-80" / "trainer_state.json").exists() and (phase_dir / "final" / "config.json").exists()
    want = RewardScorer(model, tok).score([p["prompt"] for p in held[:8]], [p["chosen"] for p in held[:8]])
    # the fixture's settings: a resumed run must continue the same schedule
    phase = RewardPhase(sources=["echo"], max_steps=80, learning_rate=2e-3, per_device_train_batch_size=16,
                        warmup_ratio=0.05)
    spec = TrainSpec(max_length=64, bf16=False, gradient_checkpointing=False, logging_steps=20, save_steps=20)
    # a finished phase is loaded, not retrained
    m2, metrics = train_phase(tiny_rm(tiny_tokenizer, seed=5), tiny_tokenizer, held, [], phase, spec, LoraSpec(),
                              phase_dir, "cpu")
    assert metrics == {"resumed_final": 1}
    assert RewardScorer(m2, tok).score([p["prompt"] for p in held[:8]], [p["chosen"] for p in held[:8]]) == \
        pytest.approx(want, abs=1e-5)
    # an interrupted phase (no final, last checkpoint at step 60) resumes there and ends where an
    # uninterrupted run ends: same data order, same optimizer/scheduler/RNG state
    import shutil

    train, _ = echo_task
    shutil.rmtree(phase_dir / "final")
    shutil.rmtree(phase_dir / "checkpoint-80")
    m3, metrics = train_phase(tiny_rm(tiny_tokenizer, seed=5), tiny_tokenizer, train, [], phase, spec, LoraSpec(),
                              phase_dir, "cpu")
    assert metrics["steps"] == 80
    assert RewardScorer(m3, tok).score([p["prompt"] for p in held[:8]], [p["chosen"] for p in held[:8]]) == \
        pytest.approx(want, abs=1e-3)


def test_lora_phase_trains_adapters_and_head_then_merges(tiny_tokenizer, tmp_path):
    from peft import PeftModel

    model = tiny_rm(tiny_tokenizer, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoraSpec(enabled=True, r=4, alpha=8, dropout=0.0, target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    phase = RewardPhase(sources=["echo"], max_steps=3, learning_rate=1e-2, per_device_train_batch_size=4)
    spec = TrainSpec(max_length=64, bf16=False, gradient_checkpointing=False, save_steps=100)
    merged, metrics = train_phase(model, tiny_tokenizer, echo_pairs(12), [], phase, spec, lora, tmp_path / "p", "cpu")
    assert not isinstance(merged, PeftModel) and metrics["steps"] == 3
    after = merged.state_dict()
    assert set(after) == set(before), "merging must give back the plain model's parameter names"
    assert not torch.equal(after["score.weight"], before["score.weight"]), "modules_to_save=['score'] trains the head"
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    expert = next(k for k in after if k.endswith("experts.down_proj"))
    assert not torch.equal(after[expert], before[expert]), "target_parameters adapts the routed experts"
    router = next(k for k in after if k.endswith("mlp.gate.weight"))
    assert torch.equal(after[router], before[router]), "the router gate is not a LoRA target"
    reloaded, tok = load_reward_model(tmp_path / "p" / "final")
    assert torch.equal(reloaded.state_dict()["score.weight"], after["score.weight"])
