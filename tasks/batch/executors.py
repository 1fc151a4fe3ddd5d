"""The executor interface: one part of a batch in, one output row per record out.

A part is the unit of work and of resume. The local executor decodes a part's prompt ids in this process; a
remote one (SageMaker batch transform, with ``executor: {type: sagemaker}``) uploads ``Part.input_jsonl()`` to its
input URI, runs the job over it and reads one output row per input line back; either way the caller commits the
rows as that part, so resume and exactly-once work the same for both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.batch.inputs import BatchRecord
from tasks.records import ModelRelease


@dataclass(frozen=True)
class Part:
    """Records committed together as ``parts/part-NNNNN.jsonl``, with their prompt ids when encoded here."""

    index: int
    records: Sequence[BatchRecord]
    prompt_ids: Sequence[Sequence[int]]

    @property
    def name(self) -> str:
        """Object name of the committed part under the output location."""
        return part_name(self.index)

    def input_jsonl(self) -> bytes:
        """The part as batch-input JSONL (``{"id", "messages"}`` per line): what a remote executor uploads."""
        return "".join(json.dumps({"id": r.id, "messages": r.as_messages()}, ensure_ascii=False) + "\n"
                       for r in self.records).encode()


def part_name(index: int) -> str:
    """``parts/part-00003.jsonl``."""
    return f"parts/part-{index:05d}.jsonl"


@dataclass(frozen=True)
class Answer:
    """What an executor returns for one record."""

    id: str
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int


class Executor(Protocol):
    """Runs parts of one batch job against one model version."""

    def run(self, part: Part, on_batch: Callable[[int], None]) -> list[Answer]:
        """One answer per record of ``part`` (any order); ``on_batch(n)`` after each ``n`` records finished."""

    def close(self) -> None:
        """Release the model (or remote resources)."""


def output_row(answer: Answer, release: ModelRelease) -> dict[str, Any]:
    """The output JSONL row for one answer: it names the model name and version that produced it."""
    return {"id": answer.id, "text": answer.text, "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "model": release.name, "version": release.version}
