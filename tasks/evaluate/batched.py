"""Greedy answers for a whole test split at once: ONNX folders through the serving engine's continuous batching,
Hugging Face models in left-padded batches. The gate scores what serving would answer, at serving speed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.serving.engine import Engine
from infra.serving.protocol import Done, Event, Failed, GenerationRequest, Sampling
from infra.serving.settings import EngineConfig
from tasks.data.chat import prompt_ids
from tasks.errors import SlmopsError
from tasks.evaluate.generation import generate_answers
from tasks.progress import Progress

ROWS = 16  # rows decoded together: past ~16 on 2 cores a step costs about what two smaller ones do


class EvaluationError(SlmopsError):
    """Generation failed while scoring an artifact."""


def engine_answers(path: str | Path, prompts: Sequence[list[int]], max_new_tokens: int, threads: int | None,
                   label: str) -> list[str]:
    """Greedy answers of the ONNX folder at ``path`` to every prompt, decoded by the serving engine together.

    int8 steps stay off, so each answer is what that prompt gets alone (load-independent, as the gate needs).
    """
    engine = Engine(path, EngineConfig(int8_steps="off", threads=threads or 0, max_batch_size=ROWS,
                                       max_queue=len(prompts) + 1))
    answers: list[str | None] = [None] * len(prompts)
    failures: list[str] = []
    finished = threading.Semaphore(0)

    def receiver(i: int):
        def emit(event: Event) -> None:
            if isinstance(event, Done):
                answers[i] = event.text
            elif isinstance(event, Failed):
                failures.append(f"row {i + 1}: {event.message}")
            if isinstance(event, Done | Failed):
                finished.release()
        return emit

    try:
        with Progress(len(prompts), f"evaluate {label}") as progress:
            for i, prompt in enumerate(prompts):
                engine.submit(GenerationRequest(list(prompt), max_new_tokens, Sampling(), emit=receiver(i)))
            for _ in prompts:
                finished.acquire()
                progress.update()
    finally:
        engine.close()
    if failures:
        raise EvaluationError(f"{label}: {len(failures)} generation(s) failed: {'; '.join(failures[:3])}")
    return [a or "" for a in answers]


def hf_answers(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]], max_new_tokens: int,
               label: str) -> list[str]:
    """Greedy answers of a transformers model, in left-padded batches of similar prompt length."""
    lengths = [len(prompt_ids(tokenizer, conv)) for conv in conversations]
    order = sorted(range(len(conversations)), key=lengths.__getitem__)
    answers: list[str] = [""] * len(conversations)
    with Progress(len(conversations), f"evaluate {label}") as progress:
        for start in range(0, len(order), ROWS):
            rows = order[start: start + ROWS]
            batch = generate_answers(model, tokenizer, [conversations[i] for i in rows], max_new_tokens, ROWS)
            for i, answer in zip(rows, batch, strict=True):
                answers[i] = answer
            progress.update(len(rows))
    return answers
