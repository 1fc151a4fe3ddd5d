"""Checks that run before the first training step, so a bad input costs seconds, not a training run."""

from __future__ import annotations

from prefect import task

from tasks.config import PipelineConfig
from tasks.data.prepare import encode_split
from tasks.errors import DatasetError
from tasks.evaluate.score import heldout_examples
from tasks.modeling import load_tokenizer
from tasks.records import PreparedData


def preflight(config: PipelineConfig, data: PreparedData) -> None:
    """Every split and the held-out text fit ``data.max_length`` with the student's tokenizer.

    Raises one DatasetError listing every too-long row as ``file:line`` (a missing held-out file is a
    ConfigError naming ``evaluate.heldout_text``).
    """
    tokenizer = load_tokenizer(config.distill.student)
    problems: list[str] = []
    for split in ("train", "validation", "test"):
        path = getattr(data, split)
        if path:
            try:
                encode_split(tokenizer, path, config.data.max_length, data.sources.get(split))
            except DatasetError as exc:
                problems += exc.problems
    if data.test or data.validation or config.evaluate.heldout_text:
        try:
            heldout_examples(tokenizer, data, config.evaluate, config.data.max_length)
        except DatasetError as exc:
            if config.evaluate.heldout_text:  # the default held-out text is a split, already reported above
                problems += [f"evaluate.heldout_text {p}" for p in exc.problems]
    if problems:
        raise DatasetError("data", problems, summary=f"{len(problems)} row(s) longer than data.max_length "
                           f"{config.data.max_length} tokens (raise data.max_length or shorten them)")


preflight_task = task(preflight, name="preflight")
