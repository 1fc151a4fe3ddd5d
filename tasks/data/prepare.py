"""Read instruction JSONL (local or s3://), validate every row, normalise to chat, write prepared splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import task

from tasks.config import DataConfig
from tasks.data.chat import encode_chat
from tasks.errors import DatasetError, DataSourceError
from tasks.records import PreparedData

ROLES = ("system", "user", "assistant")


def read_text(uri: str) -> str:
    """Read a local file or an ``s3://bucket/key`` object (boto3 honours ``AWS_ENDPOINT_URL``)."""
    if uri.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise DatasetError(uri, ["not an s3://bucket/key URI"])
        try:
            body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise DataSourceError(uri, [f"cannot read from S3: {exc}"]) from None
    else:
        path = Path(uri)
        if not path.is_file():
            raise DatasetError(uri, ["file not found"])
        body = path.read_bytes()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(uri, [f"not UTF-8 text: {exc}"]) from None


def _check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return [f"'messages' must be a list, got {type(messages).__name__}"]
    if not messages:
        return ["'messages' is empty"]
    problems = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(f"{where} must be an object, got {type(msg).__name__}")
            continue
        missing = [k for k in ("role", "content") if k not in msg]
        if missing:
            problems.append(f"{where} is missing {', '.join(repr(k) for k in missing)}")
            continue
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            problems.append(f"{where}.role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(f"{where}.content must be a string, got {type(content).__name__}")
        elif not content.strip():
            problems.append(f"{where}.content is empty")
    if not problems:
        if messages[-1]["role"] != "assistant":
            problems.append("the last message must be from the assistant (the answer to learn)")
        if not any(m["role"] == "user" for m in messages):
            problems.append("no 'user' message")
    return problems


def normalise_row(row: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """Return ``({"messages": [...]}, [])`` for a valid row, or ``(None, problems)``."""
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, got {type(row).__name__}"]
    has_chat, has_pc = "messages" in row, ("prompt" in row or "completion" in row)
    if has_chat and has_pc:
        return None, ["row mixes 'messages' with 'prompt'/'completion'; use one format"]
    if has_chat:
        problems = _check_messages(row["messages"])
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]] if not problems else None
        return ({"messages": msgs} if msgs else None), problems
    if has_pc:
        problems = []
        for key in ("prompt", "completion"):
            if key not in row:
                problems.append(f"missing {key!r}")
            elif not isinstance(row[key], str):
                problems.append(f"{key!r} must be a string, got {type(row[key]).__name__}")
            elif not row[key].strip():
                problems.append(f"{key!r} is empty")
        if problems:
            return None, problems
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["completion"]}]}, []
    return None, [f"expected 'messages' or 'prompt'/'completion' keys, found {sorted(row)}"]


def load_rows(uri: str) -> list[dict[str, Any]]:
    """Read and validate a JSONL file; raise DatasetError listing every bad line (``file:line: why``).

    Each row is ``{"messages": [...], "line": n}`` with ``n`` its line in ``uri``, so later checks (lengths)
    can still name the user's file and line.
    """
    rows, problems = [], []
    for lineno, line in enumerate(read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{uri}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        row, row_problems = normalise_row(raw)
        problems.extend(f"{uri}:{lineno}: {p}" for p in row_problems)
        if row is not None:
            rows.append({**row, "line": lineno})
    if not rows and not problems:
        problems.append(f"{uri}: no rows (the file is empty)")
    if problems:
        raise DatasetError(uri, problems)
    return rows


def prepare_data(cfg: DataConfig, out_root: Path) -> PreparedData:
    """Validate every split, write normalised chat JSONL under ``out_root/<digest>``, return their record."""
    splits = {"train": cfg.train, "validation": cfg.validation, "test": cfg.test}
    loaded = {name: load_rows(uri) for name, uri in splits.items() if uri}
    encoded = {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
               for name, rows in loaded.items()}
    h = hashlib.sha256()
    for name in sorted(encoded):
        h.update(name.encode())
        h.update(encoded[name].encode())
    digest = h.hexdigest()
    folder = Path(out_root) / digest[:16]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in encoded.items():
        path = folder / f"{name}.jsonl"
        path.write_text(text, encoding="utf-8")
        paths[name] = str(path)
    return PreparedData(train=paths["train"], validation=paths.get("validation"), test=paths.get("test"),
                        digest=digest, rows={k: len(v) for k, v in loaded.items()},
                        sources={k: v for k, v in splits.items() if v})


def read_prepared_rows(path: str) -> list[tuple[int, list[dict[str, str]]]]:
    """``(source line, messages)`` of every row of a chat JSONL split (prepared by ``prepare_data`` or not)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            rows.append((row.get("line", number), row["messages"]))
    return rows


def read_prepared(path: str) -> list[list[dict[str, str]]]:
    """Message lists of a chat JSONL split."""
    return [messages for _, messages in read_prepared_rows(path)]


def encode_split(tokenizer: Any, path: str, max_length: int,
                 source: str | None = None) -> list[tuple[list[int], list[int]]]:
    """Encode every conversation of a split; rows over ``max_length`` are one error naming each ``source:line``."""
    encoded, too_long = [], []
    for line, messages in read_prepared_rows(path):
        try:
            encoded.append(encode_chat(tokenizer, messages, max_length))
        except ValueError as exc:
            too_long.append(f"{source or path}:{line}: {exc}")
    if too_long:
        raise DatasetError(source or path, too_long)
    return encoded


def _is_transient(task: Any, run: Any, state: Any) -> bool:
    """Retry only reads that failed in transit (S3), never malformed rows."""
    try:
        state.result()
    except DataSourceError:
        return True
    except Exception:
        return False
    return False


prepare_data_task = task(prepare_data, name="prepare-data", retries=2, retry_delay_seconds=2,
                         retry_condition_fn=_is_transient)
