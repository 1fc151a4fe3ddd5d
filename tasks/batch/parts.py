"""A batch output as committed parts: the plan that fixes them, what is committed already, and the manifest.

Layout under the output location::

    plan.json          written once by the first attempt: input digest, model version, settings, part count
    errors.jsonl       rows that were not processed (file:line and why); the same on every attempt
    parts/part-NNNNN.jsonl   one output row per record of part N, in input order; each written atomically
    manifest.json      written last: counts, digests, version, timings; its presence means the run is complete

Records are cut into parts in input order, ``part_size`` each, so the same input, version and settings always
give the same parts. A restarted run keeps every committed part whose ids are exactly the planned ones and
generates the others: every input id ends up in the output exactly once, whenever the run was killed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from tasks.batch.executors import part_name
from tasks.batch.inputs import BatchRecord
from tasks.batch.store import OutputStore
from tasks.errors import SlmopsError

PLAN, ERRORS, MANIFEST, PARTS = "plan.json", "errors.jsonl", "manifest.json", "parts/"


class BatchError(SlmopsError):
    """A batch job cannot run or go on as asked; the message says what to change."""


def now() -> str:
    """UTC time for records."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class BatchPlan(BaseModel):
    """What one batch output holds; a restarted run must agree with it to resume."""

    input_uri: str
    input_sha256: str
    model_name: str
    model_version: str = Field(description="Resolved when the first attempt started; later attempts keep it.")
    settings: dict[str, Any] = Field(description="The config that shapes the output (generation, part_size).")
    records: int
    parts: int
    created_at: str = Field(default_factory=now)


def read_plan(store: OutputStore) -> BatchPlan | None:
    """The plan of an output that was started before, if any."""
    raw = store.read(PLAN)
    return BatchPlan.model_validate_json(raw) if raw else None


def pinned_ref(model_ref: str, plan: BatchPlan | None) -> str:
    """The reference to resolve: a started output keeps the version its first attempt resolved."""
    if plan is None:
        return model_ref
    name, _, version = model_ref.partition("@")[0].partition("/")
    if name != plan.model_name or version not in ("", plan.model_version):
        raise BatchError(f"the output was started with {plan.model_name}/{plan.model_version}, not {model_ref}; "
                         "use another --output or remove it")
    return f"{plan.model_name}/{plan.model_version}"


def check_plan(existing: BatchPlan, current: BatchPlan, where: str) -> None:
    """Raise BatchError when a restarted run differs from the one that started ``where``."""
    for field, label in (("input_sha256", "input (sha256)"), ("model_version", "model version"),
                         ("settings", "settings"), ("records", "record count")):
        before, after = getattr(existing, field), getattr(current, field)
        if before != after:
            raise BatchError(f"{where} was started with another {label}: {before!r}, now {after!r}; resume with the "
                             "same input and --set options, or use another --output")


def split_parts(records: Sequence[BatchRecord], part_size: int) -> list[range]:
    """Index ranges of each part, in input order."""
    return [range(i, min(i + part_size, len(records))) for i in range(0, len(records), part_size)]


def encode_rows(rows: Sequence[dict[str, Any]]) -> bytes:
    """JSONL bytes of ``rows``."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def decode_rows(data: bytes) -> list[dict[str, Any]]:
    """Rows of a JSONL part."""
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def committed_parts(store: OutputStore, planned: list[list[str]]) -> set[int]:
    """Indexes of parts already committed; raise BatchError if one holds other ids than planned."""
    done = set()
    present = set(store.names(PARTS))
    for index, ids in enumerate(planned):
        name = part_name(index)
        if name not in present:
            continue
        got = [row["id"] for row in decode_rows(store.read(name) or b"")]
        if got != ids:
            raise BatchError(f"{store.location(name)} holds {len(got)} rows that are not the {len(ids)} planned "
                             "for it; the output was written by another run: use another --output")
        done.add(index)
    extra = present - {part_name(i) for i in range(len(planned))}
    if extra:
        raise BatchError(f"{store.uri} holds parts that no plan of this run names: {sorted(extra)[:3]}")
    return done


class PartSummary(BaseModel):
    """One committed part as the manifest lists it."""

    name: str
    rows: int
    sha256: str


def summarise_parts(store: OutputStore, parts: int) -> tuple[list[PartSummary], list[dict[str, Any]], str]:
    """Every committed part, all output rows in order, and the sha256 of the parts' bytes concatenated."""
    whole = hashlib.sha256()
    summaries, rows = [], []
    for index in range(parts):
        data = store.read(part_name(index))
        if data is None:
            raise BatchError(f"{store.location(part_name(index))} is missing; run the batch again to resume")
        whole.update(data)
        part_rows = decode_rows(data)
        rows += part_rows
        summaries.append(PartSummary(name=part_name(index), rows=len(part_rows),
                                     sha256=hashlib.sha256(data).hexdigest()))
    return summaries, rows, whole.hexdigest()


def read_manifest(store: OutputStore) -> dict[str, Any] | None:
    """The manifest of a finished run, or None."""
    raw = store.read(MANIFEST)
    return json.loads(raw) if raw else None
