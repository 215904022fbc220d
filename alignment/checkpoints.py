"""Cheap checks that a folder is a usable model checkpoint, before anything loads it.

A model folder (``save_pretrained``) needs ``config.json`` (valid JSON), weights
(``model.safetensors``, sharded ``*.safetensors`` with their index, or ``pytorch_model.bin``) and,
for a policy, a tokenizer. Safetensors files are checked without loading a tensor: the header
must parse and the file must be exactly as long as the header says, which catches a truncated
copy or an interrupted write. A ``.bin`` file must be a complete zip archive (``torch.save``).

:func:`check_model_dir` raises :class:`alignment.errors.DataError` naming the folder and what is
wrong; :func:`last_good_checkpoint` picks the newest intact trainer checkpoint of a stage (a
broken newer one is skipped with a warning, so a resume never dies on a half-written save).
"""

from __future__ import annotations

import json
import re
import struct
import warnings
import zipfile
from pathlib import Path

from alignment.errors import DataError, MissingFileError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None."""
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is truncated ({size} bytes)"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > 100 << 20:
            return f"{path.name} is truncated or not a safetensors file (header of {n} bytes, file of {size})"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path.name} has a corrupt header"
    if not isinstance(header, dict):
        return f"{path.name} has a corrupt header"
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(t["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            return f"{path.name} has a corrupt header (tensor {name!r})"
    if size != 8 + n + end:
        return f"{path.name} is truncated or corrupt ({size} bytes, its header says {8 + n + end})"
    return None


def _bin_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError):
        return f"{path.name} is truncated or not a torch.save file"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why ``folder`` has no complete set of weights, or None."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                return f"{index_name} is corrupt"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"weight shard {shard} (named by {index_name}) is missing"
                check = _safetensors_problem if shard.endswith(".safetensors") else _bin_problem
                if (why := check(folder / shard)) is not None:
                    return why
            return None
        if (folder / single).is_file():
            check = _safetensors_problem if single.endswith(".safetensors") else _bin_problem
            return check(folder / single)
    adapters = folder / "adapter_model.safetensors"
    if adapters.is_file():
        return _safetensors_problem(adapters)
    return "no weights (model.safetensors or pytorch_model.bin)"


def check_model_dir(path: str | Path, what: str = "model", tokenizer: bool = True) -> Path:
    """Return ``path`` if it is a complete model folder; else raise a one-line error naming it.

    Args:
        path (`str` or `Path`): the folder (``save_pretrained`` layout).
        what (`str`, *optional*): how the message names it (e.g. ``stage 'sft_hard' input 'policy'``).
        tokenizer (`bool`, *optional*, defaults to `True`): require tokenizer files too.

    Raises:
        MissingFileError: the path does not exist.
        DataError: anything else (a file, an empty folder, no or corrupt config, weights or tokenizer).
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what}: {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what}: {path} is a file, not a model folder (save_pretrained output)")
    if not any(path.iterdir()):
        raise DataError(f"{what}: {path} is an empty folder, not a model checkpoint")
    config = path / "config.json"
    if not config.is_file():
        raise DataError(f"{what}: {path} has no config.json: not a model checkpoint (save_pretrained output)")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{what}: {config} is not a valid config (not a JSON object)") from None
    if (why := weights_problem(path)) is not None:
        raise DataError(f"{what}: {path}: {why}")
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise DataError(f"{what}: {path} has no tokenizer ({' / '.join(TOKENIZER_FILES[:2])})")
    return path


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a trainer checkpoint folder (``checkpoint-<step>``) cannot be resumed from, or None."""
    state = ckpt / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return "trainer_state.json is missing or corrupt"
    if (ckpt / "config.json").is_file() or any(ckpt.glob("*.safetensors")) or any(ckpt.glob("*.bin")):
        return weights_problem(ckpt)
    return None  # not a model checkpoint (e.g. a test's step counter): the state file is all there is


def last_good_checkpoint(folder: str | Path) -> str | None:
    """Newest ``checkpoint-<step>`` in ``folder`` that is intact (see :func:`checkpoint_problem`), or None.

    A newer broken one (a save interrupted by a kill, a truncated copy) is skipped with a warning
    naming it; the resume then starts from the one before it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = []
    for p in folder.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            steps.append((int(m.group(1)), p))
    for _, p in sorted(steps, reverse=True):
        why = checkpoint_problem(p)
        if why is None:
            return str(p)
        warnings.warn(f"skipping checkpoint {p}: {why}; resuming from an earlier one", stacklevel=2)
    return None
