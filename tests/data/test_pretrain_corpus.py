"""The offline corpus needs nothing that `make setup` does not install; the optional fortunes_zh
source is parsed from a fixture here (so its code is tested on every machine) and, when its
Debian files are absent, skipped with one line.

Run: python -m pytest -q tests/data/test_pretrain_corpus.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import alignment.data.pretrain_corpus as corpus
from alignment.train.pretrain import BaseConfig

REPO = Path(__file__).resolve().parents[2]
ANSI_RED, ANSI_OFF = "\x1b[1;31m", "\x1b[0m"


@pytest.fixture
def fresh_corpus(monkeypatch):
    """Clear the per-process source cache and the 'already reported' set around a test that moves FORTUNES_ZH_DIR."""
    corpus.source_texts.cache_clear()
    monkeypatch.setattr(corpus, "_SKIPPED", set())
    yield corpus
    corpus.source_texts.cache_clear()


@pytest.fixture
def fortunes_dir(tmp_path, monkeypatch, fresh_corpus):
    """A stand-in for /usr/share/games/fortunes in the fortunes-zh layout: %-separated, ANSI colours."""
    d = tmp_path / "fortunes"
    d.mkdir()
    (d / "chinese").write_text(f"{ANSI_RED}天行健{ANSI_OFF}，君子以自强不息。\n%\n学而不思则罔。\n%\n", encoding="utf-8")
    (d / "tang300").write_text("床前明月光，\n疑是地上霜。\n%\n\n%\n春眠不觉晓。\n", encoding="utf-8")
    (d / "song100").write_text("%\n大江东去，浪淘尽。\n", encoding="utf-8")
    monkeypatch.setattr(corpus, "FORTUNES_ZH_DIR", d)
    return d


def test_defaults_are_what_setup_installs_and_match_the_base_recipe():
    assert "fortunes_zh" not in corpus.DEFAULT_SOURCES
    assert set(corpus.OPTIONAL_SOURCES).isdisjoint(corpus.DEFAULT_SOURCES)
    # the base recipe leaves both lists to BaseConfig, whose defaults are DEFAULT_SOURCES
    base = yaml.safe_load((REPO / "recipes" / "stage" / "base.yaml").read_text(encoding="utf-8"))
    defaults = BaseConfig(model={})
    assert tuple(base.get("sources", defaults.sources)) == corpus.DEFAULT_SOURCES
    assert tuple(base.get("tokenizer_sources", defaults.tokenizer_sources)) == corpus.DEFAULT_SOURCES


def test_fortunes_zh_parses_blocks_and_strips_colours(fortunes_dir):
    texts = corpus.fortunes_zh_texts()
    assert texts == ["天行健，君子以自强不息。", "学而不思则罔。", "床前明月光，\n疑是地上霜。", "春眠不觉晓。", "大江东去，浪淘尽。"]
    assert corpus.fortunes_zh_available()
    # named in a recipe and present: read like any other source, nothing reported
    assert set(corpus.load_corpus(("fortunes_zh",), split="all")) == set(texts)


def test_fortunes_zh_absent_is_skipped_with_one_line(tmp_path, monkeypatch, fresh_corpus, capsys):
    monkeypatch.setattr(corpus, "FORTUNES_ZH_DIR", tmp_path / "not_installed")
    assert not corpus.fortunes_zh_available()
    with pytest.raises(FileNotFoundError, match="Debian package fortunes-zh"):
        corpus.fortunes_zh_texts()

    first = corpus.load_corpus(("fortunes_zh", "arithmetic"), split="all")
    again = corpus.load_corpus(("fortunes_zh", "arithmetic"), split="all")
    assert first == again == corpus.load_corpus(("arithmetic",), split="all")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line per process, not one per call
    assert "skipping optional source 'fortunes_zh'" in err[0] and "fortunes-zh" in err[0]
    assert str(tmp_path / "not_installed" / "chinese") in err[0]


def test_missing_package_message_names_this_repository():
    with pytest.raises(FileNotFoundError) as e:
        corpus._package_dir("surely_not_an_installed_package_xyz")
    assert "make setup" in str(e.value) and "data_cards/" in str(e.value) and "shared/" not in str(e.value)
