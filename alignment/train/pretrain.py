"""The ``base`` stage: tokenizer + MoE model + a short causal-LM warm-up on offline text and math.

What it does, top to bottom:

1. **Tokenizer**: load ``tokenizer_path`` if given; with ``init_from`` use the dense
   checkpoint's own vocabulary with our chat format (ChatML template with generation markers,
   eos ``<|im_end|>``, pad distinct from eos: ``alignment.model.tokenizer.adopt_chat_format``);
   otherwise train ours (alignment.model.tokenizer) on the offline corpus
   (alignment.data.pretrain_corpus) at ``vocab_size``.
2. **Model**: either a fresh ``YiLightningForCausalLM`` from the ``model`` preset (its
   ``vocab_size`` set to the tokenizer's length), or a dense Llama/Qwen2/Mistral checkpoint
   upcycled to our MoE (alignment.model.upcycle) when ``init_from`` is set.
3. **Warm-up**: plain causal-LM training with ``transformers.Trainer`` on the offline
   corpus (chatterbot EN/ZH, jieba words, XSum, BoolQ) plus procedural arithmetic with
   worked steps, so later math stages have something to build on. Documents are joined
   with a separator token and cut into ``seq_len`` blocks (GPT-style pretraining blocks,
   no padding). Checkpoints go to ``ctx.checkpoint_dir``; an interrupted run resumes from
   ``ctx.last_checkpoint()``.
4. **Save**: ``save_pretrained`` of model + tokenizer into a temp folder, published as
   output ``model``. Metrics: first/last train loss, held-out loss before/after, tokens,
   parameters, wall time; the held-out loss is also reported on the math sources alone.

Run alone:  ``yialign stages=[base]``  (or ``yialign stages=[base] stage.base.max_steps=5``).
Tests:      ``python -m pytest -q tests/train/test_pretrain.py``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from alignment.artifacts import atomic_write_json, drop_timings
from alignment.data.pretrain_corpus import DEFAULT_SOURCES, load_corpus
from alignment.errors import ConfigError
from alignment.stage_contract import StageContext, StageResult
from alignment.train.args import TrainArgs

MATH_SOURCES = ("arithmetic", "reasoning_gym")


@dataclass
class BaseConfig(TrainArgs):
    """Schema of ``recipes/stage/base.yaml``: the training fields of
    :class:`alignment.train.args.TrainArgs` (pre-training defaults below) plus these.

    Args:
        model (`dict`): ``YiLightningConfig`` kwargs (the ``model`` preset, ``${model}``);
            ``vocab_size`` and the special-token ids are taken from the tokenizer. Ignored
            for the architecture when ``init_from`` is set (the dense checkpoint fixes it).
        tokenizer_path (`str`, *optional*, defaults to `None`): a saved tokenizer to use
            instead of training one.
        vocab_size (`int`, *optional*, defaults to `100352`): size of the trained tokenizer
            (the report's vocabulary).
        tokenizer_sources (`list[str]`, *optional*): corpus sources for tokenizer training.
        tokenizer_max_chars_per_source (`int`, *optional*, defaults to `None`): cap per
            source for tokenizer training (None: all of it).
        init_from (`str`, *optional*, defaults to `None`): a dense HF checkpoint folder, or a
            ``.gguf`` file, to upcycle instead of training from scratch.
        upcycle (`dict`, *optional*): keyword arguments of
            ``alignment.model.upcycle.upcycle_dense`` (``num_segments``, ``replicas``,
            ``top_k``, ``num_shared_segments``, config overrides ...).
        calibrate_router_blocks (`int`, *optional*, defaults to `0`): with ``init_from``, fit
            the routers to the dense FFN's segment norms on this many train blocks
            (``alignment.model.upcycle.calibrate_router``); use it when ``upcycle.top_k`` is
            below the number of routed segments (0: zero router).
        sources (`list[str]`, *optional*): corpus sources of the warm-up text.
        max_chars_per_source (`int`, *optional*, defaults to `None`): cap per source of warm-up text.
        seq_len (`int`, *optional*, defaults to `2048`): tokens per training block.
        max_steps (`int`, *optional*, defaults to `1000`): optimizer steps (0: no training,
            just build and save).
        learning_rate, warmup_ratio, weight_decay, bf16, gradient_checkpointing, save_steps:
            :class:`~alignment.train.args.TrainArgs` fields with pre-training defaults (`3e-4`,
            `0.05`, `0.1`, `False`, `False`, `200`).
        eval_blocks (`int`, *optional*, defaults to `32`): held-out blocks for the loss before/after.
        seed (`int`, *optional*, defaults to `None`): training seed; the recipe's seed when None.
        num_threads (`int`, *optional*, defaults to `None`): ``torch.set_num_threads`` for this
            stage (None: torch's default). On a CPU shared with other jobs, 1 avoids OpenMP
            oversubscription (measured: 0.9 s/step with 1 thread vs 6.7 s/step with 2 on a
            2-core box at load 7).
    """

    model: dict[str, Any] = MISSING
    tokenizer_path: Optional[str] = None
    vocab_size: int = 100352
    tokenizer_sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES))
    tokenizer_max_chars_per_source: Optional[int] = None
    init_from: Optional[str] = None
    upcycle: dict[str, Any] = field(default_factory=dict)
    calibrate_router_blocks: int = 0
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES))
    max_chars_per_source: Optional[int] = None
    seq_len: int = 2048
    # TrainArgs fields whose defaults differ for pre-training
    max_steps: int = 1000
    learning_rate: float = 3e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 200
    eval_blocks: int = 32
    seed: Optional[int] = None
    num_threads: Optional[int] = None


# --------------------------------------------------------------------------- data


def pack_blocks(texts: list[str], tokenizer, seq_len: int, sep_id: int) -> list[list[int]]:
    """Tokenize ``texts``, join them with ``sep_id`` before each document, cut into ``seq_len`` blocks.

    The tail shorter than ``seq_len`` is dropped (no padding, every token trains).
    """
    if not texts:
        return []
    ids: list[int] = []
    for doc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.append(sep_id)
        ids.extend(doc)
    return [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]


def separator_id(tokenizer) -> int:
    """Document separator: ``<|endoftext|>`` when the vocabulary has it (ours, SmolLM2, Qwen), else EOS."""
    tok_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if tok_id is not None and tok_id != tokenizer.unk_token_id:
        return tok_id
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither <|endoftext|> nor an eos token to separate documents")
    return tokenizer.eos_token_id


def heldout_loss(model, blocks: list[list[int]], batch_size: int, device, bf16: bool = False) -> float:
    """Mean next-token cross-entropy (no aux loss) over ``blocks``; NaN when there are none."""
    import torch

    if not blocks:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), autocast:
        for i in range(0, len(blocks), batch_size):
            x = torch.tensor(blocks[i : i + batch_size], device=device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += ce.item()
            count += x[:, 1:].numel()
    model.train()
    return total / count


# --------------------------------------------------------------------------- build


def build_tokenizer_for(cfg: BaseConfig):
    from alignment.model.tokenizer import build_tokenizer, load_tokenizer

    if cfg.tokenizer_path:
        return load_tokenizer(cfg.tokenizer_path)
    texts = load_corpus(cfg.tokenizer_sources, split="train", max_chars_per_source=cfg.tokenizer_max_chars_per_source)
    return build_tokenizer(texts, vocab_size=cfg.vocab_size)


def build_model(cfg: BaseConfig, tokenizer):
    import alignment.model  # noqa: F401  (registers yi_lightning with the Auto classes)
    from alignment.model import YiLightningForCausalLM
    from alignment.model.config import config_from_dict

    model_kwargs = dict(cfg.model)
    model_kwargs.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = config_from_dict(model_kwargs, source="stage.base.model")
    return YiLightningForCausalLM(config)


def set_special_token_ids(model, tokenizer) -> None:
    """Point the model's config and generation config at the tokenizer's bos/eos/pad ids."""
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    for cfg in (model.config, model.generation_config):
        if cfg is not None:
            for key, value in ids.items():
                setattr(cfg, key, value)


def upcycled_start(init_from: str, upcycle: dict[str, Any]):
    """What the base stage starts from when ``init_from`` names a dense checkpoint: ``(model,
    tokenizer, dense)``, the dense model upcycled to the MoE (``upcycle``: ``upcycle_dense``'s
    arguments), the tokenizer in our chat format, the model pointed at its special ids.
    The benchmarks and the GPU tests build h100_small's model through it."""
    from alignment.model.tokenizer import adopt_chat_format
    from alignment.model.upcycle import load_dense, upcycle_dense

    dense, tokenizer = load_dense(init_from)
    tokenizer = adopt_chat_format(tokenizer)  # our ChatML template, eos <|im_end|>, pad != eos
    model = upcycle_dense(dense, **upcycle)
    set_special_token_ids(model, tokenizer)
    return model, tokenizer, dense


# --------------------------------------------------------------------------- run


def run(cfg: BaseConfig, ctx: StageContext) -> StageResult:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    from alignment.train.profile import profile_callbacks

    t0 = time.time()
    router_r2 = float("nan")
    seed = ctx.seed if cfg.seed is None else cfg.seed
    set_seed(seed)
    device = torch.device(ctx.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    # ---- tokenizer and model
    if cfg.init_from:
        model, tokenizer, dense = upcycled_start(cfg.init_from, cfg.upcycle)
        if cfg.calibrate_router_blocks > 0:
            from alignment.model.upcycle import calibrate_router

            texts = load_corpus(cfg.sources, split="train", max_chars_per_source=cfg.max_chars_per_source, seed=seed)
            calib = pack_blocks(texts, tokenizer, cfg.seq_len, separator_id(tokenizer))[: cfg.calibrate_router_blocks]
            if not calib:
                raise ConfigError(f"stage.base.calibrate_router_blocks: no train block of seq_len={cfg.seq_len} tokens")
            r2 = calibrate_router(model, dense, torch.tensor(calib))
            router_r2 = sum(r2.values()) / len(r2)
        del dense
    else:
        tokenizer = build_tokenizer_for(cfg)
        model = build_model(cfg, tokenizer)
    if cfg.seq_len > model.config.max_position_embeddings:
        raise ConfigError(
            f"stage.base.seq_len={cfg.seq_len} exceeds the model's max_position_embeddings="
            f"{model.config.max_position_embeddings}"
        )
    n_params = sum(p.numel() for p in model.parameters())
    t_build = time.time() - t0

    # ---- warm-up text: every source, shuffled so each step mixes languages and math.
    # (max_steps=0 and eval_blocks=0 read no text at all: upcycle-and-save on a machine
    # without the corpus packages, e.g. the GPU box.)
    sep = separator_id(tokenizer)
    blocks: list[list[int]] = []
    if cfg.max_steps > 0:
        texts = load_corpus(cfg.sources, split="train", max_chars_per_source=cfg.max_chars_per_source, seed=seed)
        random.Random(seed).shuffle(texts)
        blocks = pack_blocks(texts, tokenizer, cfg.seq_len, sep)
        if not blocks:
            raise ConfigError(
                f"stage.base: the warm-up corpus ({sum(map(len, texts))} chars from {cfg.sources}) is shorter than "
                f"one block of seq_len={cfg.seq_len} tokens; raise max_chars_per_source or lower seq_len"
            )
    # held-out loss on all sources, and on the math sources alone (what later math stages build on)
    held: dict[str, list[list[int]]] = {"all": [], "math": []}
    math_sources = [s for s in cfg.sources if s in MATH_SOURCES]
    for key, srcs in (("all", cfg.sources), ("math", math_sources)):
        if cfg.eval_blocks > 0:
            held_texts = load_corpus(srcs, split="heldout", max_chars_per_source=cfg.max_chars_per_source, seed=seed)
            random.Random(seed + 1).shuffle(held_texts)
            held[key] = pack_blocks(held_texts, tokenizer, cfg.seq_len, sep)[: cfg.eval_blocks]
    model.to(device)
    bs, bf16 = cfg.per_device_train_batch_size, cfg.bf16 and device.type == "cuda"
    before = {k: heldout_loss(model, b, bs, device, bf16) for k, b in held.items()}

    # ---- train
    metrics: dict[str, Any] = {}
    if cfg.max_steps > 0:
        dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
        args = TrainingArguments(**cfg.hf_kwargs(str(ctx.checkpoint_dir), device.type, seed),
                                 logging_first_step=True, disable_tqdm=False)
        model.config.use_cache = False  # no KV cache while training; restored before saving
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=profile_callbacks())
        last = ctx.last_checkpoint()
        trainer.train(resume_from_checkpoint=last)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics.update(
            train_loss_first=losses[0] if losses else float("nan"),
            train_loss_last=losses[-1] if losses else float("nan"),
            resumed_from_step=int(Path(last).name.split("-")[-1]) if last else 0,
        )
        model = trainer.model
        model.config.use_cache = True
    after = {k: heldout_loss(model, b, bs, device, bf16) for k, b in held.items()}

    # ---- save
    tmp = ctx.tmp_dir("model")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    out = ctx.publish(tmp, "model")
    tokens = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.seq_len
    metrics.update(
        heldout_loss_before=before["all"],
        heldout_loss_after=after["all"],
        heldout_math_loss_before=before["math"],
        heldout_math_loss_after=after["math"],
        train_tokens=tokens,
        corpus_tokens=len(blocks) * cfg.seq_len,
        epochs=tokens / max(1, len(blocks) * cfg.seq_len),
        params=n_params,
        vocab_size=len(tokenizer),
        upcycled=bool(cfg.init_from),
        router_calibration_r2=router_r2,
        build_s=round(t_build, 2),
        wall_s=round(time.time() - t0, 2),
    )
    # the published file holds no wall times: its hash is part of the next stage's input hash
    atomic_write_json(ctx.stage_dir / "metrics.json", drop_timings(metrics))
    return StageResult(outputs={"model": out, "metrics": "metrics.json"}, metrics=metrics)
