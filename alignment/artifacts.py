"""Run directories, atomic writes, content hashes and the run manifest.

Every file the pipeline or a stage writes goes through a temp file in the same folder
followed by ``os.replace``, so a run killed at any instant leaves either the old file or
the new one, never half of one. The manifest (``runs/<name>/manifest.json``) is the
commit point of a stage: a stage counts as done only once its entry says ``completed``
with the content hashes of its outputs.

Layout::

    runs/<run_name>/
      manifest.json         per stage: status, config hash, input hashes, outputs, metrics, wall time
      config.yaml           the composed recipe of the last invocation
      <stage>/              one folder per stage; the stage writes only there
        checkpoints/        trainer checkpoints (resume)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, mode: str):
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, rename."""
    with _atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSON lines (UTF-8, keys in insertion order) atomically."""
    with _atomic_file(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def atomic_replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``dst``, replacing any previous ``dst``.

    Two renames: the old ``dst`` is moved aside first, then ``src`` takes its place. A kill
    between them leaves ``dst`` absent (never half-written); the manifest has not yet
    marked the stage completed, so the next run redoes it.
    """
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a malformed line raises naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows


# --------------------------------------------------------------------------- hashes


def _is_scratch(p: Path) -> bool:
    # temp files, moved-aside folders and checkpoints are not part of an artifact's content
    return p.name.startswith(".") or p.name == "checkpoints"


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (relative paths + file contents, sorted; scratch skipped)."""
    path = Path(path)
    if path.is_file():
        return file_hash(path)
    if not path.is_dir():
        raise FileNotFoundError(f"artifact {path} does not exist")
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not _is_scratch(Path(d)))
        for name in sorted(files):
            p = Path(root) / name
            if _is_scratch(p):
                continue
            h.update(str(p.relative_to(path)).encode())
            h.update(file_hash(p).encode())
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable hash of a JSON-able config (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- manifest


class Manifest:
    """``runs/<name>/manifest.json``: one entry per stage, rewritten atomically on every change."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: corrupt manifest ({e.msg}); move it aside to start over") from None
        else:
            self.data = {"run_dir": str(self.run_dir), "stages": {}}

    @property
    def stages(self) -> dict[str, dict]:
        return self.data["stages"]

    def entry(self, name: str) -> dict | None:
        return self.stages.get(name)

    def update(self, name: str, **fields: Any) -> dict:
        entry = self.stages.setdefault(name, {})
        entry.update(fields)
        self.save()
        return entry

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def outputs_intact(self, name: str) -> bool:
        """True when stage ``name`` completed and every output still has its recorded hash."""
        entry = self.entry(name)
        if not entry or entry.get("status") != "completed":
            return False
        stage_dir = self.run_dir / name
        for key, rel in entry.get("outputs", {}).items():
            p = stage_dir / rel
            if not p.exists() or content_hash(p) != entry.get("output_hashes", {}).get(key):
                return False
        return True


def git_commit(dirty_mark: bool = False) -> str:
    """The repository commit this code runs from ("unknown" outside a git checkout, e.g. a wheel).

    With ``dirty_mark``, ``-dirty`` is appended when tracked files differ from that commit.
    ``YIALIGN_COMMIT`` in the environment wins: a run from a copied tree (a GPU box that receives
    the working files with stale git metadata) names the commit its files came from that way."""
    import subprocess

    if os.environ.get("YIALIGN_COMMIT"):
        return os.environ["YIALIGN_COMMIT"]

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        if dirty_mark and commit != "unknown":
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10)
            commit += "-dirty" if st.stdout.strip() else ""
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"
