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
      .yialign.lock         the run's lock (one writer at a time: run_lock); .yialign.lock.json names the holder
      <stage>/              one folder per stage; the stage writes only there
        checkpoints/        trainer checkpoints (resume; deleted once the stage completes unless keep_checkpoints)

Files are created with the permissions the umask allows (``0666 & ~umask``), as ``open`` would.
Every JSONL file is read through :func:`iter_jsonl`: bad UTF-8, invalid JSON or a line longer than
the row-size limit raise :class:`alignment.errors.BadRowError` naming the file and line.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and putting it back (no getter before 3.13)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, mode: str):
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_umask(root: str | os.PathLike) -> None:
    """Give every file under ``root`` the mode a plain ``open`` would (``0666 & ~umask``; ``0777`` for
    executables). Libraries that write through private temp files (safetensors' ``save_file`` makes
    ``0600`` weights) otherwise leave a run other users cannot read."""
    mask = _umask()
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
                if not os.path.islink(p):
                    want = (0o777 if st.st_mode & 0o111 else 0o666) & ~mask
                    if st.st_mode & 0o777 != want:
                        os.chmod(p, want)
            except OSError:
                pass


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


# --------------------------------------------------------------------------- reading JSONL

#: Default cap on one JSONL line (1 MiB): a longer row is almost always a broken or mis-joined file,
#: and one such row copied into a mixture costs gigabytes. ``yialign max_row_bytes=N`` changes it
#: for a run (:func:`row_limit`); ``max_row_bytes=0`` in a call means no cap.
DEFAULT_MAX_ROW_BYTES = 1 << 20
_max_row_bytes = DEFAULT_MAX_ROW_BYTES


def max_row_bytes() -> int:
    """The current cap on one JSONL line, in bytes (0 = none)."""
    return _max_row_bytes


@contextlib.contextmanager
def row_limit(n: int):
    """Use ``n`` bytes as the cap on one JSONL line inside the ``with`` block (the pipeline sets the run's)."""
    global _max_row_bytes
    old, _max_row_bytes = _max_row_bytes, int(n)
    try:
        yield
    finally:
        _max_row_bytes = old


def _row_error(where: str, kind: str, detail: str) -> Exception:
    from alignment.errors import BadRowError

    return BadRowError(where, kind, detail)


def iter_jsonl(path: str | os.PathLike, max_bytes: int | None = None, bad: str = "raise") -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` for every non-blank line of a JSONL file (``.gz`` too); ``where`` is ``path:line``.

    The one JSONL reader of the project: a line that is not UTF-8, is longer than ``max_bytes``
    (default: :func:`max_row_bytes`; 0 = no cap) or is not valid JSON raises
    :class:`alignment.errors.BadRowError` naming the file and line; with ``bad="yield"`` that error
    is yielded in place of the row instead (callers that skip bad rows). An over-long line is never
    held in memory whole: it is read in chunks and dropped.

    Raises:
        MissingFileError: when ``path`` does not exist or is a folder.
    """
    from alignment.errors import MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {'is a folder, not a JSONL file' if path.is_dir() else 'does not exist'}")
    limit = max_row_bytes() if max_bytes is None else int(max_bytes)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(limit + 1) if limit > 0 else f.readline()
            if not raw:
                return
            lineno += 1
            where = f"{path}:{lineno}"
            if limit > 0 and len(raw) > limit and not (len(raw) == limit + 1 and raw.endswith(b"\n")):
                size = len(raw)
                while not raw.endswith(b"\n"):  # skip the rest of the line without keeping it
                    raw = f.readline(1 << 20)
                    if not raw:
                        break
                    size += len(raw)
                size -= raw.endswith(b"\n")
                err = _row_error(where, "too_large", f"line is {size} bytes, over the row-size limit of {limit} "
                                 f"(if such rows are intended, raise it: yialign max_row_bytes=N, "
                                 f"yialign-reward inspect --max-row-bytes N)")
                if bad == "yield":
                    yield where, err
                    continue
                raise err
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                err = _row_error(where, "bad_encoding", f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                                 f"of the line); convert the file to UTF-8")
                if bad == "yield":
                    yield where, err
                    continue
                raise err from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                err = _row_error(where, "bad_json", f"invalid JSON ({e.msg} at column {e.colno})")
                if bad == "yield":
                    yield where, err
                    continue
                raise err from None
            yield where, row


def read_jsonl(path: str | os.PathLike, max_bytes: int | None = None) -> list[dict]:
    """Read a JSONL file (see :func:`iter_jsonl`); a bad line raises naming the file and line number."""
    return [row for _, row in iter_jsonl(path, max_bytes)]


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file; a missing file or non-UTF-8 bytes raise a one-line error naming it."""
    from alignment.errors import DataError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); convert the file to UTF-8") from None


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


def is_timing_key(key: str) -> bool:
    """True for a wall-clock measurement (``wall_s``, ``sample_s``, ``train_runtime``, ``*_per_second``)."""
    return key.endswith("_s") or "runtime" in key or key.endswith("_per_second")


def drop_timings(obj: Any) -> Any:
    """``obj`` without its wall-clock entries (see :func:`is_timing_key`), recursively.

    For the metrics files a stage publishes as outputs: their content hash feeds the next stage's
    input hash, so a wall time in them would rerun everything downstream after an identical rerun.
    The times stay in the manifest (the StageResult's metrics) and the report."""
    if isinstance(obj, dict):
        return {k: drop_timings(v) for k, v in obj.items() if not (isinstance(k, str) and is_timing_key(k))}
    if isinstance(obj, list):
        return [drop_timings(v) for v in obj]
    return obj


def config_hash(obj: Any) -> str:
    """Stable hash of a JSON-able config (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- manifest


class Manifest:
    """``runs/<name>/manifest.json``: one entry per stage, rewritten atomically on every change.

    Only the holder of the run's lock (:func:`run_lock`) writes it. Each update still re-reads the
    file and changes only its own stage's entry, so no other stage's entry can be lost. A manifest
    that is not valid JSON or does not have the expected shape raises :class:`DataError` naming it.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST
        self.existed = self.path.exists()
        self.data = self._read() or {"run_dir": str(self.run_dir), "stages": {}}

    def _read(self) -> dict | None:
        from alignment.errors import DataError

        if not self.path.exists():
            return None
        hint = f"move it aside (mv {self.path} {self.path}.bad) to start the run over"
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise DataError(f"{self.path}: corrupt manifest ({why}); {hint}") from None
        except OSError as e:
            raise DataError(f"{self.path}: cannot read the manifest ({e.strerror or e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise DataError(f"{self.path}: corrupt manifest (no 'stages' object); {hint}")
        for name, entry in data["stages"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("status"), str):
                raise DataError(f"{self.path}: corrupt manifest (stage '{name}' has no status); {hint}")
            for key in ("outputs", "output_hashes", "input_hashes", "metrics"):
                if not isinstance(entry.get(key, {}), dict):
                    raise DataError(f"{self.path}: corrupt manifest (stage '{name}': '{key}' is not an object); {hint}")
        return data

    @property
    def stages(self) -> dict[str, dict]:
        return self.data["stages"]

    def entry(self, name: str) -> dict | None:
        return self.stages.get(name)

    def update(self, name: str, **fields: Any) -> dict:
        """Merge ``fields`` into stage ``name``'s entry (re-reading the file first) and save."""
        self._refresh()
        entry = self.stages.setdefault(name, {})
        entry.update(fields)
        self.save()
        return entry

    def restore(self, name: str, entry: dict | None) -> None:
        """Put stage ``name``'s entry back to ``entry`` (``None``: no entry) and save."""
        self._refresh()
        if entry is None:
            self.stages.pop(name, None)
        else:
            self.stages[name] = entry
        if not self.stages and not self.existed:
            self.path.unlink(missing_ok=True)  # the manifest did not exist before this run
            return
        self.save()

    def _refresh(self) -> None:
        disk = self._read()
        if disk is not None:
            self.data["stages"] = disk["stages"]

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def outputs_intact(self, name: str) -> bool:
        """True when stage ``name`` completed and every output still has its recorded hash."""
        return self.changed_output(name) is None and (self.entry(name) or {}).get("status") == "completed"

    def changed_output(self, name: str) -> str | None:
        """The first output of a completed stage ``name`` that is missing or differs from its recorded hash."""
        entry = self.entry(name)
        if not entry or entry.get("status") != "completed":
            return None
        stage_dir = self.run_dir / name
        for key, rel in entry.get("outputs", {}).items():
            p = stage_dir / rel
            if not p.exists() or content_hash(p) != entry.get("output_hashes", {}).get(key):
                return key
        return None


# --------------------------------------------------------------------------- run lock

LOCK_FILE = ".yialign.lock"
LOCK_OWNER_FILE = ".yialign.lock.json"


def lock_owner(run_dir: str | os.PathLike) -> dict:
    """What the current holder of ``run_dir``'s lock wrote about itself ({} when unknown)."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_OWNER_FILE).read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, timeout: float = 0.0, command: str | None = None):
    """Hold ``run_dir``'s lock for the ``with`` block: one writer per run directory.

    An OS file lock (``filelock``, flock on Unix) on ``<run_dir>/.yialign.lock``: the kernel releases
    it when the holder exits, even on ``kill -9``, so a stale lock never blocks a rerun. The holder
    writes its pid, host, start time and command to ``.yialign.lock.json`` for the error message.

    Args:
        timeout (`float`, *optional*, defaults to `0`): seconds to wait for another holder to finish;
            0 refuses at once, a negative value waits as long as it takes.

    Raises:
        RunLockedError: another process holds the lock (the message names its pid and command).
    """
    from filelock import FileLock, Timeout

    from alignment.errors import RunLockedError

    run_dir = Path(run_dir)
    lock = FileLock(str(run_dir / LOCK_FILE))

    def holder() -> str:
        owner = lock_owner(run_dir)
        if not owner:
            return "a process whose pid is not known yet"
        return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
                + (f": {owner['command']}" if owner.get("command") else ""))

    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if timeout == 0:
                raise
            how_long = "as long as it takes" if timeout < 0 else f"up to {timeout:g} s"
            print(f"yialign: run directory {run_dir} is in use by another yialign process ({holder()}); "
                  f"waiting {how_long}", file=sys.stderr, flush=True)
            lock.acquire(timeout=timeout if timeout > 0 else -1, poll_interval=0.2)
    except Timeout:
        waited = f" (waited {timeout:g} s)" if timeout > 0 else ""
        raise RunLockedError(f"run directory {run_dir} is in use by another yialign process ({holder()}){waited}; "
                             f"wait for it to finish, or rerun with lock_timeout=SECONDS to wait for it") from None
    try:
        import socket

        atomic_write_json(run_dir / LOCK_OWNER_FILE, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command or ""})
        yield
    finally:
        try:
            (run_dir / LOCK_OWNER_FILE).unlink(missing_ok=True)
        finally:
            lock.release()


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
