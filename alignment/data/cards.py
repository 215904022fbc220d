"""Data cards: a YAML header (validated against :data:`CARD_SCHEMA`) plus a short markdown body.

Every dataset file a stage writes gets a card next to it, and every such card is written by
:func:`write_card`, which fills ``commit``, ``hashes`` and ``seed`` the same way for all of them:
the SFT mixtures (``write_mixture_card``), synth's files (``synth/outputs.py``), the reward
stage's pair sets (``reward/runner.py``) and online DPO's pairs (``alignment/train/online``).
Generated cards start from a template in ``data_cards/`` (:func:`card_template`); ``data_cards/``
also holds one hand-written card per real dataset a recipe names. All kinds share the schema, so
``python -m alignment.data.cards data_cards/*.md`` checks them all (exit 1 on the first invalid
card, naming the file and key).

Header keys (``kind: mixture`` cards need the starred ones too)::

    name: str                 dataset / mixture name
    kind: mixture | dataset
    description: str
    sources: [{name: str, count: int, ...}]   where the rows come from, with counts
    fields: [str]             columns of a row
    license: str              license notes (terms-of-use limits included)
    seed: int            *    mixture seed
    hashes: {str: str}   *    sha256 of the files the card describes
    target_count: int    *
    achieved_count: int  *
    commit: str               repository commit of the code that wrote a generated card
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from alignment.artifacts import atomic_write_text, file_hash, git_commit

# key -> (python type(s), required for every card, required for mixtures)
CARD_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool, bool]] = {
    "name": (str, True, True),
    "kind": (str, True, True),
    "description": (str, True, True),
    "sources": (list, True, True),
    "fields": (list, True, True),
    "license": (str, True, True),
    "seed": (int, False, True),
    "hashes": (dict, False, True),
    "target_count": (int, False, True),
    "achieved_count": (int, False, True),
    "decontamination": (dict, False, False),
    "bad_rows": (dict, False, False),
    "homepage": (str, False, False),
    "records": (int, False, False),
    "used_by": (list, False, False),
    "stage": (str, False, False),
    "commit": (str, False, False),
}
KINDS = ("mixture", "dataset")


class CardError(ValueError):
    """An invalid data card; the message names the file and the key."""


def validate_header(header: Any, where: str = "<card>") -> dict:
    """Check a parsed card header against :data:`CARD_SCHEMA`; returns it or raises :class:`CardError`."""
    if not isinstance(header, dict):
        raise CardError(f"{where}: header must be a YAML mapping, got {type(header).__name__}")
    unknown = sorted(set(header) - set(CARD_SCHEMA))
    if unknown:
        raise CardError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(CARD_SCHEMA)}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise CardError(f"{where}: key 'kind' must be one of {KINDS}, got {kind!r}")
    for key, (typ, required, required_mixture) in CARD_SCHEMA.items():
        if key not in header:
            if required or (kind == "mixture" and required_mixture):
                raise CardError(f"{where}: missing required key '{key}'")
            continue
        value = header[key]
        # bool is an int subclass: a `seed: true` is a typo, not a seed.
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise CardError(f"{where}: key '{key}' must be {getattr(typ, '__name__', typ)}, got {type(value).__name__}")
    for i, src in enumerate(header["sources"]):
        if not isinstance(src, dict) or not isinstance(src.get("name"), str):
            raise CardError(f"{where}: sources[{i}] needs a string 'name'")
        count = src.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise CardError(f"{where}: sources[{i}] ('{src['name']}') needs a non-negative int 'count', got {count!r}")
    if not header["sources"]:
        raise CardError(f"{where}: 'sources' is empty")
    if not all(isinstance(f, str) for f in header["fields"]):
        raise CardError(f"{where}: 'fields' must be a list of strings")
    if kind == "mixture":
        total = sum(s["count"] for s in header["sources"])
        if total != header["achieved_count"]:
            raise CardError(f"{where}: source counts sum to {total} but achieved_count is {header['achieved_count']}")
    return header


def parse_card(text: str, where: str = "<card>") -> tuple[dict, str]:
    """Split a card into (validated header, markdown body)."""
    if not text.startswith("---\n"):
        raise CardError(f"{where}: a card starts with a '---' line opening its YAML header")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise CardError(f"{where}: YAML header is not closed by a '---' line")
    try:
        header = yaml.safe_load(text[4:end])
    except yaml.YAMLError as e:
        raise CardError(f"{where}: header is not valid YAML ({e})") from None
    body = text[end + 5 :]
    if not body.strip():
        raise CardError(f"{where}: the markdown body is empty")
    return validate_header(header, where), body


def validate_card(path: str | Path) -> dict:
    """Validate the card file at ``path``; returns its header."""
    return parse_card(Path(path).read_text(encoding="utf-8"), str(path))[0]


def render_card(header: dict, body: str) -> str:
    validate_header(header)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=100) + "---\n\n" + body.strip() + "\n"


def card_template(path: str | Path) -> tuple[dict, str]:
    """A card template (``data_cards/*_generated.md`` and the like; itself a valid card): its header,
    to update, and its body, a ``str.format`` template for :func:`write_card`'s ``values``."""
    return parse_card(Path(path).read_text(encoding="utf-8"), str(path))


def write_card(path: str | Path, header: dict, body: str, files: Iterable[str | Path] = (), seed: int | None = None,
               values: dict[str, Any] | None = None) -> Path:
    """Write a generated data card (YAML header + markdown body) atomically; the one card writer.

    Every generated card gets the same three facts the same way: ``commit`` (the repository commit
    of the code that wrote it, :func:`alignment.artifacts.git_commit`), ``hashes`` (sha256 of each
    of ``files`` by file name) and ``seed``.

    Args:
        path (`str` or `Path`): the card file (``.md``).
        header (`dict`): header keys (:data:`CARD_SCHEMA`); validated before anything is written.
        body (`str`): the markdown body, or with ``values`` a ``str.format`` template (a template's body).
        files (`Iterable[str | Path]`, *optional*): the files the card describes; their hashes go in ``hashes``.
        seed (`int`, *optional*): the seed that made them.
        values (`dict`, *optional*): fills the body's ``{placeholders}``; ``{commit}`` is always available.
    """
    commit = git_commit()
    header = {**header, "commit": commit}
    files = list(files)
    if files:
        header["hashes"] = {Path(f).name: file_hash(f) for f in files}
    if seed is not None:
        header["seed"] = int(seed)
    if values is not None:
        body = body.format(commit=commit, **values)
    return atomic_write_text(path, render_card(header, body))


def write_mixture_card(path: str | Path, report: dict, description: str, hashes: dict[str, str], fields: list[str], stage: str, decontamination: dict | None = None) -> Path:
    """Write the card of a mixture built by :func:`alignment.data.mixture.build_mixture`.

    Args:
        path (`str` or `Path`): card file (``.md``).
        report (`dict`): the mixture report (name, seed, counts, per-source rows).
        description (`str`): one line on what the mixture is for.
        hashes (`dict[str, str]`): file name -> sha256 of the files the card describes.
        fields (`list[str]`): row columns.
        stage (`str`): the stage that wrote it.
        decontamination (`dict`, *optional*): eval sets, n-gram size and drop counts.
    """
    sources = [
        {k: s[k] for k in ("name", "path", "license", "available", "target")} | {"count": s["achieved"], "repeats": s["repeats"]}
        for s in report["sources"]
    ]
    licenses = sorted({s["license"] for s in report["sources"]})
    header = {
        "name": report["name"],
        "kind": "mixture",
        "stage": stage,
        "description": description,
        "sources": sources,
        "fields": fields,
        "license": "; ".join(f"{s['name']}: {s['license']}" for s in report["sources"]) if len(licenses) > 1 else licenses[0],
        "hashes": hashes,
        "target_count": report["target_count"],
        "achieved_count": report["achieved_count"],
        "bad_rows": {s["name"]: s["bad_rows"] for s in report["sources"]},
    }
    if decontamination is not None:
        header["decontamination"] = decontamination
    lines = [
        f"# {report['name']}",
        "",
        description,
        "",
        f"Written by stage `{stage}` with seed {report['seed']}; "
        f"{report['achieved_count']:,} of {report['target_count']:,} target examples "
        f"({'with' if report['replacement'] else 'without'} replacement).",
        "",
        "| source | available | target | achieved | repeats | bad rows | decontaminated |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["sources"]:
        lines.append(f"| {s['name']} | {s['available']:,} | {s['target']:,} | {s['achieved']:,} | {s['repeats']} | {s['bad_rows']} | {s['decontaminated']} |")
    short = [s["name"] for s in report["sources"] if s["achieved"] < s["target"]]
    if short:
        lines += ["", f"Short of target (not enough rows, no replacement): {', '.join(short)}."]
    return write_card(path, header, "\n".join(lines), seed=report["seed"])


if __name__ == "__main__":
    bad = 0
    for p in sys.argv[1:]:
        try:
            validate_card(p)
            print(f"ok  {p}")
        except CardError as e:
            print(f"BAD {e}")
            bad += 1
    sys.exit(1 if bad else 0)
