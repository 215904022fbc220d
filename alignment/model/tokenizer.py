"""Build and load the project tokenizer: byte-level BPE, digits split, bilingual, ChatML template.

Design (Yi-Lightning report: vocabulary 100,352, digits split, byte fallback, zh + en):

- **Byte-level BPE** (``tokenizers`` library). The base alphabet is all 256 bytes, so any
  UTF-8 string - Chinese, emoji, control characters - encodes without an unknown token and
  decodes back exactly. This gives the guarantee SentencePiece's ``byte_fallback`` gives,
  without ``<0xNN>`` tokens.
- **Pre-tokenization**: every digit is its own pre-token (so "2024" is always 2, 0, 2, 4:
  arithmetic sees one token per digit), then a GPT-4-style split into words, punctuation
  runs and whitespace. CJK runs stay together so merges can learn common Chinese words.
- **Special tokens**: ``<|endoftext|>`` (document separator, also BOS), ``<|im_start|>``,
  ``<|im_end|>`` (EOS: ends an assistant turn, so ``generate`` stops there), ``<|pad|>``.
  If the corpus is too small to learn enough merges, the vocabulary is padded with
  ``<|reserved_N|>`` tokens so ``len(tokenizer) == vocab_size`` exactly (the model's
  embedding size is then known before training).
- **Chat template**: ChatML (system/user/assistant), ``add_generation_prompt``, and
  ``{% generation %}`` markers around assistant content + ``<|im_end|>`` so TRL's
  ``assistant_only_loss=True`` trains only on assistant tokens.
- **Deterministic**: the same texts in the same order give byte-identical ``tokenizer.json``.

Use::

    from alignment.model.tokenizer import build_tokenizer, load_tokenizer
    tok = build_tokenizer(texts, vocab_size=1024)
    tok.save_pretrained("out/tok"); tok = load_tokenizer("out/tok")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [BOS_TOKEN, IM_START, EOS_TOKEN, PAD_TOKEN]

# GPT-4 (cl100k) split minus its 1-3 digit groups: digits are already isolated one by one
# by the Digits pre-tokenizer before this runs. Letters include CJK (\p{L}).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML. The {% generation %} block covers what the assistant must learn to produce: its
# content and the <|im_end|> that stops generation (but not the role header, which the
# prompt supplies via add_generation_prompt).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('unknown chat role ' + message['role'] + ': expected system, user or assistant') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            # use_regex=False: the split above already did GPT-2's job
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    model_max_length: int = 65536,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on ``texts``.

    Args:
        texts (`Iterable[str]`): training text; order matters for exact reproducibility.
        vocab_size (`int`): final ``len(tokenizer)`` including special and reserved tokens
            (100,352 for the paper setting; ~1,024 for tests).
        min_frequency (`int`, *optional*, defaults to `2`): a pair must occur this often to merge.
        model_max_length (`int`, *optional*, defaults to `65536`): context length recorded
            in the tokenizer config (the paper's 64K).
        show_progress (`bool`, *optional*, defaults to `False`): the trainer's progress bar.

    Returns:
        `PreTrainedTokenizerFast` with bos/eos/pad set and the chat template attached.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    min_vocab = len(alphabet) + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size={vocab_size} is below the minimum {min_vocab} (256 bytes + special tokens)")

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    # Pad to exactly vocab_size with reserved specials: the embedding size is then fixed by
    # the config alone, and later stages can assign meaning to reserved ids without resizing.
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    if len(hf) != vocab_size:
        raise RuntimeError(f"built a tokenizer of {len(hf)} tokens, expected vocab_size={vocab_size}")
    return hf


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` (ours, or any model folder's)."""
    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer_config.json (not a saved tokenizer)")
    return AutoTokenizer.from_pretrained(str(path))


def adopt_chat_format(tokenizer):
    """Give a dense checkpoint's tokenizer (e.g. SmolLM2's, converted from GGUF) the project's chat format.

    Upcycled checkpoints must train and sample exactly like ours: the ChatML template with
    ``{% generation %}`` markers (TRL's ``assistant_only_loss`` needs them; SmolLM2's own template
    has none and adds a default system prompt), ``<|im_end|>`` as EOS (the GGUF conversion yields
    ``<|im_start|>``, and TRL would then rewrite the model's EOS to it), and a pad token distinct
    from EOS (``<|endoftext|>`` when the vocabulary has it, which is also our BOS/separator).
    The vocabulary itself is unchanged, so the dense embeddings stay valid. Returns ``tokenizer``.

    Raises:
        ValueError: the vocabulary lacks ``<|im_start|>`` or ``<|im_end|>`` (not a ChatML vocabulary:
            adding them would need new embedding rows).
    """
    vocab = tokenizer.get_vocab()  # (SmolLM2's unk is <|endoftext|>: compare against the vocabulary, not unk)

    def has(token: str) -> bool:
        return token in vocab

    missing = [t for t in (IM_START, EOS_TOKEN) if not has(t)]
    if missing:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name}: no {', '.join(missing)} in its vocabulary; the chat format needs ChatML tokens")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = EOS_TOKEN
    if has(BOS_TOKEN):
        tokenizer.bos_token = BOS_TOKEN
    for pad in (PAD_TOKEN, BOS_TOKEN):
        if has(pad):
            tokenizer.pad_token = pad
            break
    else:
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise ValueError("tokenizer: no pad token distinct from <|im_end|> (<|pad|> or <|endoftext|>) in its vocabulary")
    return tokenizer
