"""Prefect cache keys from input digests plus config (never from model objects)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic_core import to_json


def content_key(*parts: Any) -> str:
    """Stable sha256 of JSON-able parts (records carry digests, configs carry every field)."""
    return hashlib.sha256(to_json(parts, fallback=str)).hexdigest()


def digest_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """``cache_key_fn`` for tasks whose parameters are records, configs and paths."""
    return f"{context.task.name}-{content_key(parameters)}"


def stage_dir(root: Path, stage: str, *inputs: Any) -> Path:
    """Deterministic output folder for a stage, keyed by its inputs, so a cached result's path exists."""
    return Path(root) / "models" / stage / content_key(*inputs)[:16]
