"""SFT loss (packing, per-sample weighting, MoE aux loss) and the two SFT stages on the tiny model.

Run: python -m pytest -q tests/train/test_sft.py
"""

import json

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from alignment.artifacts import read_jsonl
from alignment.data.cards import validate_card
from alignment.data.mixture import MixtureSpec
from alignment.data.sources import SourceSpec
from alignment.stage_contract import InputArtifact, StageContext
from alignment.train import sft


CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "12 + 7 = 19. The answer is \\boxed{19}."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [{"role": "user", "content": "你好吗"}, {"role": "assistant", "content": "我很好,谢谢。你呢?今天过得怎么样?"}],
]


def _examples(tok):
    out = []
    for msgs in CHATS:
        enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        labels = [t if m else -100 for t, m in zip(ids, enc["assistant_masks"])]
        out.append({"input_ids": ids, "labels": labels})
    return out


@pytest.mark.parametrize("weighting, fused", [("sample", False), ("token", False), ("sample", True)])
def test_packed_loss_equals_unpacked_and_per_sample_alone(tiny_model, tiny_tokenizer, weighting, fused):
    model = tiny_model.train()  # train mode: aux loss is part of the loss
    head = model.get_output_embeddings().weight if fused else None
    examples = _examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    packed = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=pad)(examples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    loss_packed, out_packed, parts_packed = sft.sft_loss(model, packed, weighting, lm_head_weight=head)
    loss_padded, _, parts_padded = sft.sft_loss(model, padded, weighting)  # always the full-logits path
    if fused:
        assert out_packed.logits.shape[1] == 1  # the [tokens, vocab] logits were never built
    # The block-causal mask from position_ids makes the packed row compute exactly the padded batch.
    assert parts_packed["ce"].item() == pytest.approx(parts_padded["ce"].item(), rel=1e-5)
    if weighting == "sample":
        # ... and each sample counts once, whatever its length: mean of the samples' own losses.
        alone = [sft.sft_loss(model, DataCollatorForLanguageModeling(pad_token_id=pad)([e]), "sample")[2]["ce"].item() for e in examples]
        assert parts_packed["ce"].item() == pytest.approx(sum(alone) / len(alone), rel=1e-5)
    # The model's own MoE balance loss is in the loss.
    assert out_packed.aux_loss.item() > 0
    assert loss_packed.item() == pytest.approx(parts_packed["ce"].item() + out_packed.aux_loss.item(), rel=1e-6)
    # Without restarting positions (no block-causal mask), samples would see each other: loss differs.
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    assert sft.sft_loss(model, leaky, weighting)[2]["ce"].item() != pytest.approx(parts_packed["ce"].item(), rel=1e-4)


@pytest.mark.parametrize("weighting, world", [("token", 1), ("token", 2), ("sample", 1)])
def test_compute_loss_gradient_scaling(tiny_model, tiny_tokenizer, weighting, world):
    # With gradient accumulation (2 micro-steps) and, for token weighting, the Trainer's token count over
    # the whole step: the CE gradient must be the full token-mean's (token) or a 1/steps share (sample),
    # times the world size under token averaging across ranks (DDP then averages it back). The trainer's
    # own state is a stand-in: only compute_loss is under test.
    from types import SimpleNamespace

    examples = _examples(tiny_tokenizer)
    batch = DataCollatorForLanguageModeling(pad_token_id=tiny_tokenizer.pad_token_id, padding_free=True)(examples)
    n_items = int((batch["labels"][:, 1:] != -100).sum()) * 3  # this micro-batch holds a third of the step's tokens
    trainer = SimpleNamespace(
        fused_ce=False, loss_weighting=weighting, model_accepts_loss_kwargs=True, current_gradient_accumulation_steps=2,
        accelerator=SimpleNamespace(num_processes=world), args=SimpleNamespace(average_tokens_across_devices=True),
        aux_log_key="aux_loss", log_moe=lambda *a: None)
    tiny_model.train()

    def grads(loss):
        tiny_model.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in tiny_model.parameters() if p.grad is not None])

    got = grads(sft.MoESFTTrainer.compute_loss(trainer, tiny_model, batch, num_items_in_batch=n_items))
    # the reference, from the model's outputs directly (not through sft_loss)
    out = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    labels = batch["labels"][0, 1:]
    nll = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels.clamp(min=0), reduction="none")
    mask = labels != -100
    if weighting == "token":
        ce = nll[mask].sum() / n_items * world
    else:
        sample_of = torch.cumsum(batch["position_ids"][0] == 0, 0)[1:]
        ce = torch.stack([nll[mask & (sample_of == i)].mean() for i in sample_of.unique()]).mean() / 2
    aux = sft.add_aux_loss(torch.zeros(()), out.aux_loss)
    assert aux.requires_grad  # the tiny MoE has a balance loss: its 1/steps share is checked too
    want = grads(ce + aux / 2)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_sample_and_token_weighting_formulas(tiny_model, tiny_tokenizer):
    examples = _examples(tiny_tokenizer)
    batch = DataCollatorForLanguageModeling(pad_token_id=tiny_tokenizer.pad_token_id, padding_free=True)(examples)
    ce_sample = sft.sft_loss(tiny_model, batch, "sample")[2]["ce"].item()
    ce_token = sft.sft_loss(tiny_model, batch, "token")[2]["ce"].item()
    # Recompute both from the per-token NLL of the packed row.
    logits = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, :-1]
    labels = batch["labels"][0, 1:]
    nll = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    mask = labels != -100
    sample_of = torch.cumsum(batch["position_ids"][0] == 0, 0)[1:]
    per_sample = [nll[mask & (sample_of == s)].mean() for s in sample_of.unique()]
    assert ce_token == pytest.approx(nll[mask].mean().item(), rel=1e-5)
    assert ce_sample == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-5)
    assert len(per_sample) == 3 and len({int((mask & (sample_of == s)).sum()) for s in sample_of.unique()}) == 3
    with pytest.raises(ValueError, match="loss_weighting"):
        sft.sft_loss(tiny_model, batch, "row")


def test_router_balance_stats():
    stats = {"tokens_per_expert": torch.tensor([[4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), "entropy": torch.tensor([0.5, 1.5])}
    got = sft.router_balance(stats)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in got.values())  # read at log time, not per step
    assert float(got["router/load_max_over_mean"]) == pytest.approx((4.0 + 1.0) / 2)
    assert float(got["router/entropy"]) == pytest.approx(1.0)


PASS_RATE_CALLS = []


def boxed_pass_rate(record, samples):
    """Pass-rate hook the stage resolves by dotted path (the real one would call synth's verifier)."""
    PASS_RATE_CALLS.append(len(samples))
    return sum("\\boxed" in s for s in samples) / len(samples)


def _ctx(root, name, inputs):
    stage_dir = root / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(name=name, run_dir=root, stage_dir=stage_dir, inputs=inputs, device="cpu", seed=0)


def _params(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _changed(a, b):
    return sum(not torch.equal(a[k], b[k]) for k in a)


def test_sft_broad_then_sft_hard_train_and_publish(tmp_path, tiny_model, tiny_tokenizer):
    base = tmp_path / "base" / "model"
    tiny_model.save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    common = dict(
        max_length=96, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=3e-3,
        lr_scheduler_type="constant", warmup_ratio=0, logging_steps=1, gradient_checkpointing=False, save_steps=3,
    )
    # ---- stage 1: a small broad mix, repeated so the loss can drop within a few steps
    broad = MixtureSpec(name="sft_broad", target_count=24, replacement=True, sources=[
        SourceSpec(name="chatterbot_en", path="builtin:chatterbot_en", max_rows=6),
        SourceSpec(name="synthetic_math", path="builtin:synthetic_math", size=6, weight=1.0),
    ])
    ctx1 = _ctx(tmp_path, "sft_broad", {"policy": InputArtifact("policy", base.parent, {"model": base}, {})})
    r1 = sft.run(sft.SFTStageConfig(mixture=broad, max_steps=8, **common), ctx1)
    m1 = r1.metrics
    assert m1["steps"] == 8 and m1["count/chatterbot_en"] == 12 and m1["count/synthetic_math"] == 12
    assert m1["last_logged_loss"] < m1["first_logged_loss"] - 0.5, m1
    assert m1["router_load_max_over_mean"] >= 1.0 and m1["aux_loss"] > 0
    stage1 = ctx1.stage_dir / "model"
    assert _changed(_params(base), _params(stage1)) > 10
    assert validate_card(ctx1.stage_dir / "card.md")["achieved_count"] == 24 == len(read_jsonl(ctx1.stage_dir / "dataset.jsonl"))
    log = json.loads((ctx1.stage_dir / "train_log.json").read_text())
    assert "router/load_cv" in log[0] and "aux_loss" in log[0]

    # ---- stage 2: hard selection from the stage-1 model + verified synth records
    synth = tmp_path / "synth" / "sft.jsonl"
    synth.parent.mkdir()
    synth.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} * 3?"}, {"role": "assistant", "content": f"{i} * 3 = {3 * i}. The answer is \\boxed{{{3 * i}}}."}], "problem_id": f"p{i}"}) + "\n" for i in range(4)))
    hard = MixtureSpec(name="sft_hard", target_count=12, sources=[SourceSpec(name="synthetic_math", path="builtin:synthetic_math", size=30)])
    ctx2 = _ctx(tmp_path, "sft_hard", {
        "policy": InputArtifact("policy", ctx1.stage_dir, {"model": stage1}, {}),
        "synth": InputArtifact("synth", synth.parent, {"sft": synth}, {}),
    })
    hard_spec = sft.HardSelectionSpec(
        enabled=True, batch_size=16, pass_rate_fn="tests.train.test_sft.boxed_pass_rate", pass_rate_k=2, pass_rate_max_new_tokens=4
    )
    cfg2 = sft.SFTStageConfig(mixture=hard, hard=hard_spec, sampler={"backend": "native"}, max_steps=6, num_train_epochs=10, **common)
    r2 = sft.run(cfg2, ctx2)
    m2 = r2.metrics
    assert m2["count/synth_sft"] == 4 and m2["count/synthetic_math"] == 8
    report = json.loads((ctx2.stage_dir / "mixture_report.json").read_text())
    sel = report["hard_selection"]["per_source"][0]
    assert sel["pool"] == 30 and sel["kept"] == 8 and sel["mean_loss_kept"] > sel["mean_loss_pool"]
    assert report["hard_selection"]["pass_rate"] and sel["mean_pass_rate_pool"] == 0.0  # 4 random tokens never hold a boxed answer
    assert len(PASS_RATE_CALLS) == 30 and all(n == 2 for n in PASS_RATE_CALLS)
    assert _changed(_params(stage1), _params(ctx2.stage_dir / "model")) > 10
    assert m2["last_logged_loss"] < m2["first_logged_loss"], m2

    # ---- resume: a longer run of the same stage continues from its last checkpoint
    assert ctx2.last_checkpoint().endswith("checkpoint-6")
    cfg2.max_steps = 7
    r3 = sft.run(cfg2, ctx2)
    assert r3.metrics["resumed_from"].endswith("checkpoint-6") and r3.metrics["steps"] == 7


def test_lora_trains_adapters_only_and_merges(tiny_model, tiny_tokenizer, tmp_path):
    import datasets
    from trl import SFTConfig

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    flags = (tiny_model.config.output_router_logits, tiny_model.config.router_aux_loss_coef)
    ds = datasets.Dataset.from_list([{"messages": m} for m in CHATS] * 2)
    args = SFTConfig(output_dir=str(tmp_path), max_length=64, packing=True, assistant_only_loss=True, max_steps=2,
                     per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to=[], save_strategy="no")
    lora = sft.LoraSpec(enabled=True, r=4, dropout=0.0, target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    trainer = sft.MoESFTTrainer(model=tiny_model, args=args, train_dataset=ds, processing_class=tiny_tokenizer, peft_config=lora.peft_config())
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("experts" in n for n in trainable)  # routed experts adapted through target_parameters
    trainer.train()
    merged = trainer.model.merge_and_unload()
    after = merged.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.experts.down_proj"))
    # TRL's own aux-loss switches were put back: the saved config is the loaded one.
    assert (merged.config.output_router_logits, merged.config.router_aux_loss_coef) == flags
    with pytest.raises(ValueError, match="dropout"):
        sft.LoraSpec(enabled=True, target_parameters=["experts.down_proj"]).peft_config()
