"""Tokenizer tests: digits split, byte-level round trip, special tokens, chat template, determinism.

Run: python -m pytest -q tests/model/test_tokenizer.py
"""

from __future__ import annotations

import pytest

from alignment.model.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    build_tokenizer,
    load_tokenizer,
)
from tests.fixtures_tokenizer import TINY_VOCAB_SIZE, build_tiny_tokenizer


def test_vocab_size_exact_and_specials(tiny_tokenizer):
    assert len(tiny_tokenizer) == TINY_VOCAB_SIZE
    assert tiny_tokenizer.bos_token == BOS_TOKEN
    assert tiny_tokenizer.eos_token == EOS_TOKEN
    assert tiny_tokenizer.pad_token == PAD_TOKEN
    ids = {tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id}
    assert len(ids) == 3 and max(ids) < TINY_VOCAB_SIZE
    # plain text encodes without any special token added around it
    assert tiny_tokenizer("hello")["input_ids"] == tiny_tokenizer.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize(
    "text, digits",
    [
        ("2024", "2024"),  # a year: 4 single-digit tokens, never a merged "2024"
        ("x=12345678901", "12345678901"),
        ("1000 + 2000 = 3000", "100020003000"),  # frequent round numbers in the corpus still split
        ("价格是42元", "42"),  # digits inside Chinese
    ],
)
def test_digits_split_one_by_one(tiny_tokenizer, text, digits):
    tokens = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer.encode(text))
    digit_tokens = [t for t in tokens if any(c.isdigit() for c in t)]
    assert digit_tokens == list(digits)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "你好，世界！今天天气很好。",
        "Mixed 中文 and English, 3.14159 😀🚀 emoji",
        "tabs\tand\nnewlines\r\n  and   spaces ",
        "rare script: ᚠᛇᚻ, Ελληνικά, עברית, 🧬🦜",  # unseen characters: byte fallback
        "\x00\x07 control bytes",
    ],
)
def test_byte_level_round_trip(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.unk_token_id is None or tiny_tokenizer.unk_token_id not in ids
    assert tiny_tokenizer.decode(ids) == text


def test_merges_learned_for_both_languages(tiny_tokenizer):
    # A trained BPE must beat raw bytes on text like its training data: English words and
    # CJK characters (3 UTF-8 bytes each) must both compress.
    en = "I would like to know what you think about the weather."
    zh = "你好，你叫什么名字？我很好，谢谢你。"
    assert len(tiny_tokenizer.encode(en)) < 0.6 * len(en.encode("utf-8"))
    assert len(tiny_tokenizer.encode(zh)) < 0.6 * len(zh.encode("utf-8"))


def test_chat_template_format_and_generation_prompt(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    prompt = tiny_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    # special tokens are single ids, not spelled out in bytes
    ids = tiny_tokenizer.encode(prompt)
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tiny_tokenizer.eos_token_id) == 2


def test_chat_template_rejects_unknown_role(tiny_tokenizer):
    with pytest.raises(Exception, match="unknown chat role tool"):
        tiny_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_only_assistant_content(tiny_tokenizer):
    # TRL's assistant_only_loss relies on these {% generation %} masks.
    messages = [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "hello"},
    ]
    out = tiny_tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    trained = [i for i, m in zip(ids, mask) if m]
    expected = (
        tiny_tokenizer.encode("hi there")
        + [tiny_tokenizer.eos_token_id]
        + tiny_tokenizer.encode("hello")
        + [tiny_tokenizer.eos_token_id]
    )
    assert trained == expected


def test_deterministic_and_save_load(tiny_tokenizer, tiny_tokenizer_path):
    again = build_tiny_tokenizer()
    assert again.backend_tokenizer.to_str() == tiny_tokenizer.backend_tokenizer.to_str()
    loaded = load_tokenizer(tiny_tokenizer_path)
    text = "Sam has 12 apples. 你好 😀"
    assert loaded.encode(text) == tiny_tokenizer.encode(text)
    assert loaded.chat_template == tiny_tokenizer.chat_template
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert len(loaded) == TINY_VOCAB_SIZE


def test_small_corpus_padded_with_reserved_tokens():
    tok = build_tokenizer(["ab ab ab"] * 3, vocab_size=300)
    assert len(tok) == 300
    assert tok.convert_ids_to_tokens(299).startswith("<|reserved_")
    assert tok.decode(tok.encode("abc 中")) == "abc 中"


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 is below the minimum"):
        build_tokenizer(["x"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="not a saved tokenizer"):
        load_tokenizer(tmp_path)
