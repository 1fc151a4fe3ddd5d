"""Greedy answers for a whole test split at once: ONNX folders through the serving engine's continuous batching,
Hugging Face models in left-padded batches. The gate scores what serving would answer, at serving speed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.data.chat import prompt_ids
from tasks.engine.engine import Engine
from tasks.engine.protocol import Failed, GenerationRequest, Sampling
from tasks.evaluate.generation import generate_answers
from tasks.evaluate.runners import EvaluationError
from tasks.progress import Progress

ROWS = 16  # transformers rows decoded together: past ~16 on 2 cores a step costs about what two smaller ones do


def engine_answers(engine: Engine, prompts: Sequence[list[int]], max_new_tokens: int, label: str) -> list[str]:
    """Greedy answers of ``engine`` to every prompt, decoded together (an ONNX folder's ``OnnxRunner.engine``: int8
    steps off, so each answer is what that prompt gets alone, load-independent, as the gate needs)."""
    answers = [""] * len(prompts)
    failures: list[str] = []
    requests = [GenerationRequest(list(p), max_new_tokens, Sampling()) for p in prompts]
    with Progress(len(prompts), f"evaluate {label}") as progress:
        for i, end in engine.run(requests):
            if isinstance(end, Failed):
                failures.append(f"row {i + 1}: {end.message}")
            else:
                answers[i] = end.text
            progress.update()
    if failures:
        raise EvaluationError(f"{label}: {len(failures)} generation(s) failed: {'; '.join(failures[:3])}")
    return answers


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
