"""Offline DPO (alignment/train/dpo.py): preference-file validation, the stage on the tiny MoE on CPU,
and the reference log-prob cache that lets a resumed run skip the reference pass.

Run: python -m pytest -q tests/train/test_dpo.py
"""

import json
from pathlib import Path

import pytest
import torch

from alignment.stage_contract import InputArtifact, StageContext
from alignment.train.dpo import DPOStageConfig, DPOTrainArgs, read_preference_jsonl

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "rows,error",
    [
        ([{"prompt": "p", "chosen": "a"}], r"pairs.jsonl:1: missing key 'rejected'"),
        (['{"prompt": "p", "chosen": "a", "rejected": "b"}', "{oops"], r"pairs.jsonl:2: bad row \(bad_json\): invalid JSON"),
        ([{"prompt": "p", "chosen": "same", "rejected": "same"}], r":1: 'chosen' and 'rejected' are identical"),
        ([{"prompt": "", "chosen": "a", "rejected": "b"}], r":1: 'prompt' must be a non-empty string"),
        ([{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}], r":1: 'chosen' must be"),
        ([{"prompt": CHAT, "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "b"}],
         r":2: text prompt in a file whose first pair has a chat prompt"),
        ([], r"no preference pairs"),
    ],
    ids=["missing key", "bad json", "identical", "empty prompt", "messages after text prompt", "mixed kinds", "empty"],
)
def test_preference_file_errors_name_file_and_line(tmp_path, rows, error):
    with pytest.raises(ValueError, match=error):
        read_preference_jsonl(_write(tmp_path / "pairs.jsonl", rows))


def test_string_completions_after_chat_prompt_become_assistant_turns(tmp_path):
    rows = read_preference_jsonl(_write(tmp_path / "pairs.jsonl", [{"prompt": CHAT, "chosen": "4", "rejected": "5", "id": 1}] * 3),
                                 max_pairs=2)
    assert len(rows) == 2
    assert rows[0] == {"prompt": CHAT, "chosen": [{"role": "assistant", "content": "4"}],
                       "rejected": [{"role": "assistant", "content": "5"}]}


def test_offline_dpo_stage_trains_tiny_model_and_caches_reference(tmp_path, tiny_tokenizer, monkeypatch):
    from safetensors.torch import load_file
    from trl import DPOTrainer

    from alignment.train import dpo
    from tests.fixtures_model import build_tiny_model

    policy = tmp_path / "sft_hard" / "model"
    build_tiny_model(seed=0).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    pairs = _write(tmp_path / "pairs.jsonl", [
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "chosen": f"The answer is {2 * i}.",
         "rejected": "I do not know, maybe a cat."} for i in range(6)
    ])
    ref_passes = []
    real = DPOTrainer.compute_ref_log_probs
    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", lambda self, m, b: ref_passes.append(1) or real(self, m, b))

    ctx = StageContext(name="dpo", run_dir=tmp_path, stage_dir=tmp_path / "dpo", device="cpu", seed=0, inputs={
        "policy": InputArtifact("sft_hard", policy.parent, {"model": policy}, {}),
        "pairs": InputArtifact("synth", tmp_path, {"pairs": pairs}, {}),
    })
    train = DPOTrainArgs(learning_rate=2e-3, warmup_ratio=0, per_device_train_batch_size=3,
                         gradient_accumulation_steps=1, max_length=64, logging_steps=1, num_train_epochs=1)
    res = dpo.run(DPOStageConfig(train=train), ctx)

    m = res.metrics
    assert m["dpo_steps"] == 2 and m["dpo_pairs"] == 6
    assert m["dpo_reward_accuracy_last"] == 1.0 and m["dpo_reward_margin"] > 0  # it learned the preference
    assert m["dpo_aux_loss"] > 0  # the MoE balance loss was part of the objective
    assert len(ref_passes) == 2  # one reference pass over 6 pairs in batches of 3, before training
    before, after = load_file(policy / "model.safetensors"), load_file(ctx.stage_dir / res.outputs["model"] / "model.safetensors")
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2

    # A rerun (a resume) from the same initial policy on the same pairs finds the cached reference log-probs.
    ref_passes.clear()
    model, tokenizer = dpo.load_policy(policy, "cpu")
    # (The same settings as a resume has: TRL's dataset fingerprints include the trainer arguments.)
    metrics = dpo.train_dpo(model, tokenizer, dpo.read_preference_jsonl(pairs), train, ctx.checkpoint_dir,
                            device="cpu", seed=0)
    assert ref_passes == []
    assert metrics["dpo_reward_accuracy_last"] == 1.0


def test_overlong_prompts_are_dropped_and_an_all_dropped_set_is_a_clear_error(tiny_tokenizer):
    from alignment.train.dpo import drop_overlong_prompts

    short = {"prompt": CHAT, "chosen": "4", "rejected": "5"}
    long = {"prompt": [{"role": "user", "content": "seven " * 200}], "chosen": "4", "rejected": "5"}
    assert drop_overlong_prompts([short, long, short], tiny_tokenizer, 64) == [short, short]
    assert drop_overlong_prompts([long], tiny_tokenizer, None) == [long]
    with pytest.raises(ValueError, match="raise train.max_length"):
        drop_overlong_prompts([long], tiny_tokenizer, 64)
