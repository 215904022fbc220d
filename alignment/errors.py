"""User-facing errors: a bad config, data file, input or run directory.

Every command (``yialign``, ``yialign-reward``, ``yialign-synth``) prints a :class:`UserError`
as one line, ``<command>: error: <message>``, and exits with status 2, without a traceback.
The pipeline also treats a ``UserError`` raised inside a stage as "nothing happened": the
stage's folder and manifest entry go back to what they were before the stage started (see
``alignment.pipeline.run_pipeline``). Any other exception is a crash: its traceback is
printed, the stage is recorded as ``failed`` and a rerun resumes it.

Messages start with the thing that is wrong: ``path/to/file.jsonl:17: ...`` for a data row,
``stage.sft_broad.learning_rate=-1: ...`` for a config value.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (config, data, inputs, run directory); exit status 2, one line."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (e.g. ``stage.base.max_steps=-5``); names the key."""


class DataError(UserError, ValueError):
    """A data or input file that cannot be used; the message names the file (and line or row)."""


class MissingFileError(DataError, FileNotFoundError):
    """A file or folder the config names does not exist."""


class BadRowError(DataError):
    """A row that cannot be used; ``where`` is ``file:line`` (or ``file:row N``).

    Args:
        where (`str`): location, e.g. ``data/train.jsonl:17``.
        kind (`str`): short category (``bad_json``, ``bad_encoding``, ``too_large``,
            ``missing_messages``, ``unknown_role``, ``empty_content``, ``wrong_type``,
            ``no_assistant``) used to count skipped rows.
        detail (`str`): what exactly is wrong.
    """

    def __init__(self, where: str, kind: str, detail: str):
        self.where, self.kind, self.detail = where, kind, detail
        super().__init__(f"{where}: bad row ({kind}): {detail}")


class RunLockedError(UserError):
    """Another process holds the run directory's lock; the message names its pid."""


class MissingInputError(UserError, KeyError):
    """A stage asked for an input (or an output of an input) the recipe does not provide."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def one_line(message: str) -> str:
    """``message`` with its lines joined by ``"; "`` (errors are printed as one line)."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts)
