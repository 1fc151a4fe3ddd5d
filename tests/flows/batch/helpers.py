"""Batch inputs made from the tiny test split, and reading a batch output back."""

from __future__ import annotations

import json
from pathlib import Path


def split_rows(tiny_assets: Path, limit: int | None = None) -> list[dict]:
    """The tiny test split as batch rows: explicit ids on even lines, generated ids on odd ones."""
    rows = []
    for i, line in enumerate((tiny_assets / "data" / "test.jsonl").read_text().splitlines()[:limit]):
        row = json.loads(line)
        rows.append({"id": f"req-{i}", **row} if i % 2 == 0 else row)
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings for malformed lines) as JSONL."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def input_ids(path: Path) -> list[str]:
    """The ids the batch must answer, in input order (the same parser the job uses)."""
    from tasks.batch.inputs import read_input

    return [r.id for r in read_input(str(path)).records]


def output_rows(out: Path) -> list[dict]:
    """Every committed output row, parts in order."""
    return [json.loads(line) for part in sorted((out / "parts").glob("part-*.jsonl"))
            for line in part.read_text().splitlines()]
