"""Base stage tests: offline corpus split, warm-up trains and lowers loss, resume, outputs load.

Run: python -m pytest -q tests/train/test_pretrain.py
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignment.data.pretrain_corpus import arithmetic_texts, load_corpus, split_of
from alignment.stage_contract import StageContext
from alignment.train.pretrain import BaseConfig, pack_blocks, run

# A few-thousand-parameter MoE: 2 layers (1 dense + 1 MoE), 8 experts of width 16.
TINY_MODEL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts=8,
    num_shared_experts=1,
    moe_intermediate_size=16,
    router_top_k=2,
    ep_groups=2,
    pep_partitions=2,
    first_k_dense_layers=1,
    sliding_window=32,
    full_attention_interval=2,
    max_position_embeddings=256,
    impl="torch",
)


def tiny_cfg(**overrides) -> BaseConfig:
    values = dict(
        model=dict(TINY_MODEL),
        vocab_size=512,
        tokenizer_max_chars_per_source=20_000,
        max_chars_per_source=20_000,
        seq_len=64,
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        save_steps=4,
        eval_blocks=8,
    )
    values.update(overrides)
    return BaseConfig(**values)


def make_ctx(tmp_path, name="base") -> StageContext:
    return StageContext(name=name, run_dir=tmp_path, stage_dir=tmp_path / name, inputs={}, device="cpu", seed=0)


# --------------------------------------------------------------------------- corpus


def test_corpus_split_is_stable_and_disjoint():
    train = load_corpus(("chatterbot_zh", "arithmetic"), split="train")
    held = load_corpus(("chatterbot_zh", "arithmetic"), split="heldout")
    assert train and held
    assert not set(train) & set(held)
    assert all(split_of(t) == "heldout" for t in held)
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.15  # ~10% held out
    assert arithmetic_texts(50, seed=3) == arithmetic_texts(50, seed=3)
    assert arithmetic_texts(50, seed=3) != arithmetic_texts(50, seed=4)


def test_corpus_mixes_languages_and_math_and_rejects_unknown_sources():
    texts = load_corpus(BaseConfig.__dataclass_fields__["sources"].default_factory(), max_chars_per_source=3_000)
    joined = "\n".join(texts)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in joined)  # Chinese
    assert "the" in joined  # English
    assert "The answer is" in joined and " = " in joined  # worked arithmetic
    with pytest.raises(KeyError, match="unknown corpus source 'gsm8k'"):
        load_corpus(("gsm8k",))


def test_pack_blocks_separates_documents(tiny_tokenizer):
    sep = tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    blocks = pack_blocks(["1 + 1 = 2", "hello there"] * 20, tiny_tokenizer, 16, sep)
    assert blocks and all(len(b) == 16 for b in blocks)
    assert blocks[0][0] == sep
    flat = [t for b in blocks for t in b]
    assert flat.count(sep) >= len(flat) // 16  # a separator at least once per block of short docs


# --------------------------------------------------------------------------- the stage


def test_base_stage_trains_resumes_and_publishes(tmp_path):
    from alignment.model.tokenizer import load_tokenizer
    from transformers import AutoModelForCausalLM

    # untrained reference: same seed -> same tokenizer and same init, no steps
    init = run(tiny_cfg(max_steps=0), make_ctx(tmp_path / "init"))
    init_weights = load_file(tmp_path / "init" / "base" / init.outputs["model"] / "model.safetensors")

    # 8 steps, checkpoints every 4; then a rerun asking for 12 steps resumes from step 8
    ctx = make_ctx(tmp_path / "run")
    res = run(tiny_cfg(), ctx)
    m = res.metrics
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["heldout_loss_after"] < m["heldout_loss_before"]
    assert m["heldout_math_loss_after"] < m["heldout_math_loss_before"]
    assert m["train_tokens"] == 8 * 4 * 64 and m["vocab_size"] == 512 and m["resumed_from_step"] == 0
    assert ctx.last_checkpoint().endswith("checkpoint-8")

    out = ctx.stage_dir / res.outputs["model"]
    trained = load_file(out / "model.safetensors")
    changed = [k for k in init_weights if not torch.equal(init_weights[k], trained[k])]
    assert "model.layers.1.mlp.gate.weight" in changed  # the router learns
    assert "model.layers.1.mlp.experts.gate_up_proj" in changed
    assert len(changed) >= len(init_weights) - 2  # (a norm or two may barely move; most must)

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = load_tokenizer(out)
    assert model.config.vocab_size == len(tok) == 512
    assert model.config.eos_token_id == tok.eos_token_id and model.config.use_cache
    assert json.loads((ctx.stage_dir / "metrics.json").read_text())["train_tokens"] == m["train_tokens"]

    again = run(tiny_cfg(max_steps=12), ctx)
    assert again.metrics["resumed_from_step"] == 8
    assert ctx.last_checkpoint().endswith("checkpoint-12")


def test_upcycle_from_dense_checkpoint(tmp_path, tiny_tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import alignment.train.pretrain as base_mod

    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    ))
    dense.save_pretrained(tmp_path / "dense")
    tiny_tokenizer.save_pretrained(tmp_path / "dense")
    # upcycle-and-save only: must not need the corpus (the GPU box lacks its packages)
    monkeypatch.setattr(base_mod, "load_corpus", lambda *a, **k: pytest.fail("read the corpus"))
    cfg = tiny_cfg(init_from=str(tmp_path / "dense"), upcycle={"num_segments": 4, "num_shared_segments": 1},
                   max_steps=0, eval_blocks=0)
    res = run(cfg, make_ctx(tmp_path / "up"))
    assert res.metrics["upcycled"] is True and res.metrics["vocab_size"] == len(tiny_tokenizer)
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "up" / "base" / "model").eval()
    assert moe.config.model_type == "yi_lightning" and moe.config.num_experts == 3
    x = torch.randint(0, len(tiny_tokenizer), (1, 10))
    with torch.no_grad():  # zero router, k = routed segments: every segment at 1/k -> the dense function
        torch.testing.assert_close(moe(input_ids=x).logits, dense.eval()(input_ids=x).logits, atol=1e-4, rtol=1e-4)


def test_upcycle_with_router_calibration(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )).save_pretrained(tmp_path / "dense")
    tiny_tokenizer.save_pretrained(tmp_path / "dense")
    cfg = tiny_cfg(init_from=str(tmp_path / "dense"), upcycle={"num_segments": 4, "top_k": 2},
                   calibrate_router_blocks=2, max_steps=0, eval_blocks=2)
    res = run(cfg, make_ctx(tmp_path / "up"))
    assert 0.0 < res.metrics["router_calibration_r2"] <= 1.0
    router = load_file(tmp_path / "up" / "base" / "model" / "model.safetensors")["model.layers.0.mlp.gate.weight"]
    assert router.abs().sum() > 0  # fitted by calibration (no training steps), not the zero init


def test_tokenizer_path_and_too_little_text(tmp_path, tiny_tokenizer_path):
    cfg = tiny_cfg(tokenizer_path=str(tiny_tokenizer_path), max_steps=0)
    res = run(cfg, make_ctx(tmp_path / "a"))
    assert res.metrics["vocab_size"] == 1024  # the given tokenizer, not a trained 512 one
    few = tiny_cfg(tokenizer_path=str(tiny_tokenizer_path), sources=["chatterbot_zh"], max_chars_per_source=50,
                   seq_len=200)
    with pytest.raises(ValueError, match="shorter than one block of seq_len=200"):
        run(few, make_ctx(tmp_path / "b"))
    with pytest.raises(ValueError, match="seq_len=4096 exceeds the model's max_position_embeddings=256"):
        run(tiny_cfg(tokenizer_path=str(tiny_tokenizer_path), seq_len=4096), make_ctx(tmp_path / "c"))
