"""SFT data sources: where rows come from and how they become chat records.

A :class:`SourceSpec` (a recipe entry under ``data.<mixture>.sources``) names one source:

- a local file: ``.jsonl`` / ``.jsonl.gz`` (one JSON object per line), ``.json`` (an array),
  ``.parquet``, ``.arrow`` (an Arrow file written by ``datasets``), or a folder written by
  ``Dataset.save_to_disk``;
- a Hugging Face dataset id ``hf:<owner>/<name>`` (loaded with ``datasets.load_dataset``;
  these stay in recipes for users with network access, tests never use them);
- a builtin offline source ``builtin:<name>`` (:mod:`alignment.data.builtin`).

Rows are normalised with :func:`alignment.data.records.normalize_row`. A bad row stops the
load with an error naming the file and line, unless ``skip_bad_rows: true``, in which case it
is dropped and counted per kind (the counts go into the mixture report and data card).

Try it: ``python -m alignment.data.sources my.jsonl`` lists the bad rows of a file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import MISSING

from alignment.artifacts import iter_jsonl, read_text
from alignment.data.builtin import LICENSES, builtin_records
from alignment.data.records import FORMATS, BadRowError, normalize_row
from alignment.errors import DataError, MissingFileError

_MAX_BAD_EXAMPLES = 5


@dataclass
class SourceSpec:
    """One source of a mixture.

    Args:
        name (`str`): source tag stored in every record (``source`` field) and in the card.
        path (`str`): local path, ``hf:<dataset id>`` or ``builtin:<name>``.
        format (`str`, *optional*, defaults to `"auto"`): ``auto``, ``messages``,
            ``prompt_response`` or ``alpaca``.
        split (`str`, *optional*, defaults to `"train"`): split for ``hf:`` sources.
        subset (`str`, *optional*): config name for ``hf:`` sources.
        weight (`float`, *optional*, defaults to `1.0`): share of the mixture's target count
            (weights are normalised over the sources without an explicit ``count``).
        count (`int`, *optional*): exact number of examples to draw from this source; overrides
            ``weight``.
        size (`int`, *optional*): number of examples a generated builtin source makes
            (``builtin:synthetic_math``, ``builtin:task_*``); ignored for files.
        seed (`int`, *optional*): generator seed of a builtin source; defaults to the recipe's seed.
            Give sft_hard's pool another seed than sft_broad's to draw new problems.
        max_rows (`int`, *optional*): read at most this many rows (quick runs).
        skip_bad_rows (`bool`, *optional*, defaults to `False`): drop and count malformed rows
            instead of stopping at the first one.
        license (`str`, *optional*): license note for the data card; builtins fill their own.
        rename (`dict[str, str]`, *optional*, defaults to `{}`): column renames applied before
            normalising, e.g. ``{query: prompt}`` for MetaMathQA's ``query``/``response``.
    """

    name: str = MISSING
    path: str = MISSING
    format: str = "auto"
    split: str = "train"
    subset: Optional[str] = None
    weight: float = 1.0
    count: Optional[int] = None
    size: Optional[int] = None
    seed: Optional[int] = None
    max_rows: Optional[int] = None
    skip_bad_rows: bool = False
    license: Optional[str] = None
    rename: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedSource:
    """A loaded source: its records and what was dropped on the way."""

    spec: SourceSpec
    records: list[dict]
    n_read: int = 0
    n_bad: int = 0
    bad_by_kind: Counter = field(default_factory=Counter)
    bad_examples: list[str] = field(default_factory=list)

    @property
    def license(self) -> str:
        if self.spec.license:
            return self.spec.license
        if self.spec.path.startswith("builtin:"):
            return LICENSES.get(self.spec.path.split(":", 1)[1], "unknown")
        return "unknown (set `license:` in the recipe)"


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    # bad lines (encoding, size, JSON) come back as BadRowError rows: load_source raises or skips them
    yield from iter_jsonl(path, bad="yield")


def _iter_table(rows: Any, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows):
        yield f"{label}:row {i}", row


def _open_table(load, spec: SourceSpec, path: Path):
    """``load()``, with a truncated or foreign Parquet/Arrow file or dataset folder reported as a DataError."""
    try:
        return load()
    except (OSError, ValueError, TypeError) as e:  # pyarrow.ArrowInvalid is a ValueError; datasets raises both
        raise DataError(f"source '{spec.name}': cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _iter_rows(spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    """(where, row) pairs of a file / folder / hub source; a row that fails to parse is a BadRowError."""
    if spec.path.startswith("hf:"):
        import datasets

        ds = datasets.load_dataset(spec.path[3:], spec.subset, split=spec.split)
        yield from _iter_table(ds, spec.path)
        return
    path = Path(spec.path)
    if not path.exists():
        raise MissingFileError(f"source '{spec.name}': {path} does not exist")
    name = path.name.lower()
    if path.is_dir():
        import datasets

        ds = _open_table(lambda: datasets.load_from_disk(str(path)), spec, path)
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise DataError(f"source '{spec.name}': {path} has no split '{spec.split}' (it has {sorted(ds)})")
            ds = ds[spec.split]
        yield from _iter_table(ds, str(path))
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        yield from _iter_jsonl(path)
    elif name.endswith(".json"):
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise BadRowError(f"{path}:{e.lineno}", "bad_json", f"invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise BadRowError(str(path), "wrong_type", "a .json source must hold a list of rows (use .jsonl for one row a line)")
        yield from _iter_table(data, str(path))
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from _iter_table(_open_table(lambda: pq.read_table(path).to_pylist(), spec, path), str(path))
    elif name.endswith(".arrow"):
        import datasets

        yield from _iter_table(_open_table(lambda: datasets.Dataset.from_file(str(path)), spec, path), str(path))
    else:
        raise DataError(f"source '{spec.name}': cannot read {path} (expected .jsonl, .json, .parquet, .arrow or a dataset folder)")


def load_source(spec: SourceSpec, seed: int = 0, allow_empty: bool = False) -> LoadedSource:
    """Read and normalise every row of ``spec``.

    Args:
        spec (`SourceSpec`): the source.
        seed (`int`, *optional*, defaults to `0`): seed of generated builtin sources.
        allow_empty (`bool`, *optional*, defaults to `False`): accept a file without rows (an earlier
            stage's output that may legitimately be empty); otherwise that is an error naming the file.

    Returns:
        `LoadedSource`: records tagged with ``spec.name``, plus bad-row counts.

    Raises:
        BadRowError: on the first malformed row (invalid JSON or UTF-8, longer than the row-size limit,
            missing fields, wrong types) when ``spec.skip_bad_rows`` is false.
        DataError: a file with no rows, or no usable row left after skipping.
        MissingFileError: the path does not exist.
    """
    if spec.format not in FORMATS:
        raise DataError(f"source '{spec.name}': unknown format {spec.format!r}; expected one of {FORMATS}")
    if spec.path.startswith("builtin:"):
        records = builtin_records(spec.path.split(":", 1)[1], size=spec.size, seed=seed if spec.seed is None else spec.seed)
        for r in records:
            r["source"] = spec.name
        records = records[: spec.max_rows] if spec.max_rows is not None else records
        return LoadedSource(spec, records, n_read=len(records))

    out = LoadedSource(spec, [])
    for where, row in _iter_rows(spec):
        if spec.max_rows is not None and out.n_read >= spec.max_rows:
            break
        out.n_read += 1
        try:
            if isinstance(row, BadRowError):
                raise row
            if spec.rename and isinstance(row, dict):
                row = {spec.rename.get(k, k): v for k, v in row.items()}
            out.records.append(normalize_row(row, spec.format, spec.name, where, row_id=f"{spec.name}:{out.n_read - 1}"))
        except BadRowError as e:
            if not spec.skip_bad_rows:
                raise
            out.n_bad += 1
            out.bad_by_kind[e.kind] += 1
            if len(out.bad_examples) < _MAX_BAD_EXAMPLES:
                out.bad_examples.append(str(e))
    if not allow_empty and not spec.path.startswith("hf:"):
        if out.n_read == 0:
            raise DataError(f"source '{spec.name}': {spec.path} has no rows")
        if not out.records:
            raise DataError(f"source '{spec.name}': {spec.path} has no usable row ({out.n_bad} bad rows skipped: "
                            f"{dict(out.bad_by_kind)}; first: {out.bad_examples[0] if out.bad_examples else '-'})")
    return out


if __name__ == "__main__":
    # Validate files from the shell: every bad row is printed, exit status 1 if any.
    import sys

    status = 0
    for path in sys.argv[1:]:
        loaded = load_source(SourceSpec(name=path, path=path, skip_bad_rows=True))
        print(f"{path}: {len(loaded.records)} good rows, {loaded.n_bad} bad {dict(loaded.bad_by_kind)}")
        for msg in loaded.bad_examples:
            print("  " + msg)
        status |= loaded.n_bad > 0
    sys.exit(status)
