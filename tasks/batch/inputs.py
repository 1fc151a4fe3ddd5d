"""Batch input: JSONL rows ``{"id", "messages"}`` or ``{"id", "prompt"}``, each validated on its own.

A malformed row becomes a ``RowError`` naming ``file:line`` and the job goes on; a duplicate id is fatal (the
output is keyed by id). A row without ``id`` gets ``line-<n>-<digest>``: its line number and the first 12 hex
digits of the sha256 of its request, so the same file always yields the same ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tasks.data.prepare import ROLES, read_text
from tasks.errors import DatasetError

# Keys a row may carry besides its request; they are ignored (data capture writes the served answer beside it).
IGNORED_KEYS = ("response", "captured_at", "completion", "metadata", "model")
REQUEST_KEYS = ("id", "messages", "prompt")
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class BatchRecord:
    """One valid input row: its id, its line in the input, and the conversation to answer."""

    id: str
    line: int
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs ending with a user turn

    def as_messages(self) -> list[dict[str, str]]:
        """The conversation as chat-template input."""
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class RowError:
    """A row that was not processed, and why."""

    line: int
    where: str  # file:line
    error: str
    id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The errors-file row."""
        return {"line": self.line, "where": self.where, "id": self.id, "error": self.error}


@dataclass
class BatchInput:
    """A read input: its URI, sha256 of its bytes, count of non-blank rows, valid records and bad rows."""

    uri: str
    digest: str
    rows: int
    records: list[BatchRecord] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _messages(raw: Any) -> tuple[tuple[tuple[str, str], ...] | None, str | None]:
    if not isinstance(raw, list) or not raw:
        return None, "'messages' must be a non-empty list"
    pairs = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or msg.get("role") not in ROLES:
            return None, (f"messages[{i}] must be an object with 'role' ({', '.join(ROLES)}) and 'content' "
                          "(a string)")
        pairs.append((msg["role"], msg["content"]))
    if pairs[-1][0] == "assistant":  # a reference answer (a test split, a captured exchange) is not a prompt
        pairs.pop()
    if not pairs or pairs[-1][0] != "user":
        return None, "the conversation must end with a user turn (a final assistant answer is ignored)"
    if not pairs[-1][1].strip():
        return None, "the last user message is empty"
    return tuple(pairs), None


def _request(row: Any) -> tuple[tuple[tuple[str, str], ...] | None, str | None]:
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    unknown = sorted(set(row) - {*REQUEST_KEYS, *IGNORED_KEYS})
    if unknown:
        return None, (f"unknown key(s) {unknown}; a row holds 'id' and 'messages' or 'prompt', and may carry "
                      f"{', '.join(repr(k) for k in IGNORED_KEYS)} (ignored)")
    if ("messages" in row) == ("prompt" in row):
        return None, "a row needs exactly one of 'messages' or 'prompt'"
    if "messages" in row:
        return _messages(row["messages"])
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        return None, "'prompt' must be a non-empty string"
    return (("user", row["prompt"]),), None


def _row_id(row: dict[str, Any], line: int, messages: tuple[tuple[str, str], ...]) -> tuple[str | None, str | None]:
    if "id" not in row or row["id"] is None:
        digest = hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:12]
        return f"line-{line}-{digest}", None
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"'id' must be a string or an integer, got {type(value).__name__}"
    text = str(value)
    if not text.strip() or len(text) > MAX_ID_CHARS:
        return None, f"'id' must be 1 to {MAX_ID_CHARS} characters"
    return text, None


def parse_input(uri: str, text: str) -> BatchInput:
    """Validate every row of ``text`` (read from ``uri``); duplicate ids raise DatasetError naming both lines."""
    result = BatchInput(uri=uri, digest=hashlib.sha256(text.encode()).hexdigest(), rows=0)
    first_line: dict[str, int] = {}
    duplicates = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        result.rows += 1
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            result.errors.append(RowError(line, f"{uri}:{line}", f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        messages, problem = _request(row)
        row_id = None
        if messages is not None:
            row_id, problem = _row_id(row, line, messages)
        if problem:
            given = row.get("id") if isinstance(row, dict) else None
            result.errors.append(RowError(line, f"{uri}:{line}", problem, str(given) if given is not None else None))
            continue
        if row_id in first_line:
            duplicates.append(f"{uri}:{line}: duplicate id {row_id!r} (first at line {first_line[row_id]})")
            continue
        first_line[row_id] = line
        result.records.append(BatchRecord(row_id, line, messages))
    if duplicates:
        raise DatasetError(uri, duplicates, f"{len(duplicates)} duplicate id(s) in {uri}; ids must be unique")
    return result


def read_input(uri: str) -> BatchInput:
    """Read and validate a batch input, local or ``s3://``."""
    return parse_input(uri, read_text(uri))
