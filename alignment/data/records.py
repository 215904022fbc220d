"""Chat records: one normal form for every SFT source, and clear errors for bad rows.

Every example the data layer hands on is a plain dict (JSON- and Arrow-friendly)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "source": "<source name>", "id": "<source name>:<row>"}

:func:`normalize_row` turns the formats found in the wild into that form:

=================  =======================================================================
format             row fields
=================  =======================================================================
``messages``       ``messages`` (or ``conversations``/``conversation``): a list of
                   ``{"role", "content"}``; ShareGPT ``{"from", "value"}`` is accepted too
``prompt_response`` ``prompt`` + ``response`` (also ``completion``/``answer``/``output``)
``alpaca``         ``instruction`` (+ optional ``input``) + ``output``
``auto``           whichever of the above the row's keys match
=================  =======================================================================

A row that cannot be normalised raises :class:`BadRowError` naming the file and line (or row
index for Parquet/Arrow) and what is wrong; the caller either stops or, with
``skip_bad_rows``, drops and counts it (see :mod:`alignment.data.sources`).

Check a file from the shell: ``python -m alignment.data.sources path.jsonl``.
"""

from __future__ import annotations

from typing import Any

from alignment.errors import BadRowError  # noqa: F401  (re-exported: raised by normalize_row)

FORMATS = ("auto", "messages", "prompt_response", "alpaca")
ROLES = ("system", "user", "assistant")
# ShareGPT / OpenAssistant speaker names mapped onto chat roles.
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "prompter": "user"}
_MESSAGE_KEYS = ("messages", "conversations", "conversation")
_RESPONSE_KEYS = ("response", "completion", "answer", "output", "chosen")


def _message(m: Any, i: int, where: str) -> dict[str, str]:
    if not isinstance(m, dict):
        raise BadRowError(where, "wrong_type", f"message {i} is a {type(m).__name__}, expected an object")
    role = m.get("role", m.get("from"))
    content = m.get("content", m.get("value"))
    if role is None:
        raise BadRowError(where, "missing_messages", f"message {i} has no 'role' (keys: {sorted(m)})")
    if not isinstance(role, str):
        raise BadRowError(where, "wrong_type", f"message {i} role is a {type(role).__name__}, expected a string")
    role = _ROLE_ALIASES.get(role.lower(), role.lower())
    if role not in ROLES:
        raise BadRowError(where, "unknown_role", f"message {i} has role {m.get('role', m.get('from'))!r}; allowed: {ROLES}")
    if content is None:
        raise BadRowError(where, "missing_messages", f"message {i} has no 'content'")
    if not isinstance(content, str):
        raise BadRowError(where, "wrong_type", f"message {i} content is a {type(content).__name__}, expected a string")
    if not content.strip():
        raise BadRowError(where, "empty_content", f"message {i} ({role}) has empty content")
    return {"role": role, "content": content}


def _text_field(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise BadRowError(where, "missing_messages", f"no '{key}' field (keys: {sorted(row)})")
        return ""
    if not isinstance(value, str):
        raise BadRowError(where, "wrong_type", f"'{key}' is a {type(value).__name__}, expected a string")
    if required and not value.strip():
        raise BadRowError(where, "empty_content", f"'{key}' is empty")
    return value


def detect_format(row: dict) -> str:
    """The format a row's keys match (``messages``, ``alpaca``, ``prompt_response``), or ``unknown``."""
    if any(k in row for k in _MESSAGE_KEYS):
        return "messages"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and any(k in row for k in _RESPONSE_KEYS):
        return "prompt_response"
    return "unknown"


def normalize_row(row: Any, fmt: str, source: str, where: str, row_id: str | None = None) -> dict:
    """Turn one raw row into a chat record (see the module docstring), or raise :class:`BadRowError`.

    Args:
        row (`Any`): the parsed row (should be a dict).
        fmt (`str`): one of :data:`FORMATS`.
        source (`str`): source name stored in the record's ``source`` tag.
        where (`str`): ``file:line`` used in error messages.
        row_id (`str`, *optional*): id for the record; defaults to ``where``'s row part.

    Returns:
        `dict`: ``{"messages", "source", "id"}``; the conversation has at least one user and one
        assistant turn and ends with the assistant.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if not isinstance(row, dict):
        raise BadRowError(where, "wrong_type", f"row is a {type(row).__name__}, expected a JSON object")
    kind = detect_format(row) if fmt == "auto" else fmt
    if kind == "messages":
        key = next((k for k in _MESSAGE_KEYS if k in row), None)
        if key is None:
            raise BadRowError(where, "missing_messages", f"no 'messages' field (keys: {sorted(row)})")
        raw = row[key]
        if not isinstance(raw, list):
            raise BadRowError(where, "wrong_type", f"'{key}' is a {type(raw).__name__}, expected a list")
        messages = [_message(m, i, where) for i, m in enumerate(raw)]
    elif kind == "prompt_response":
        prompt = _text_field(row, "prompt", where)
        rkey = next((k for k in _RESPONSE_KEYS if k in row), "response")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text_field(row, rkey, where)}]
        system = _text_field(row, "system", where, required=False)
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
    elif kind == "alpaca":
        instruction = _text_field(row, "instruction", where)
        extra = _text_field(row, "input", where, required=False)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text_field(row, "output", where)}]
    else:
        raise BadRowError(
            where, "missing_messages", f"cannot tell the format from keys {sorted(row)}; expected messages, prompt+response or instruction+output"
        )
    if not any(m["role"] == "user" for m in messages) or not messages or messages[-1]["role"] != "assistant":
        raise BadRowError(where, "no_assistant", "conversation needs a user turn and must end with an assistant turn")
    return {"messages": messages, "source": source, "id": row_id or f"{source}:{where.rsplit(':', 1)[-1]}"}


def record_text(record: dict) -> str:
    """All message contents of a record joined by newlines (for n-gram checks and token counts)."""
    return "\n".join(m["content"] for m in record["messages"])


def prompt_messages(record: dict) -> list[dict]:
    """The conversation up to (not including) the last assistant turn: what a sampler is given."""
    return record["messages"][:-1]

