"""What the HTTP layer and a generation engine exchange: requests, sampling settings, events, the interface."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tasks.engine.sampling import Sampling

__all__ = ["Delta", "Done", "EngineStats", "Event", "Failed", "GenerationEngine", "GenerationRequest",
           "QueueFullError", "Sampling", "TokenLogprob"]


class QueueFullError(Exception):
    """The request queue is at capacity; the caller should retry later."""


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its log-probability and, for chosen tokens, the most likely alternatives."""

    token_id: int
    text: str
    bytes: list[int]
    logprob: float
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Delta:
    """New text of one request (may be empty when only logprobs advance)."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Done:
    """The request finished; ``text`` is the whole completion."""

    finish_reason: str  # "stop" | "length"
    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    token_ids: list[int] = field(default_factory=list)  # the completion's tokens (end-of-sequence not included)


@dataclass(frozen=True)
class Failed:
    """Generation failed; the request gets no more events."""

    message: str


Event = Delta | Done | Failed


def _drop(_: Event) -> None:
    return None


@dataclass
class GenerationRequest:
    """One generation request and the callback that receives its events (from the engine's thread)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; k ≥ 0: the chosen token's plus k alternatives
    adapter: str | None = None  # LoRA adapter the answer uses (a multi-LoRA model); None: the base model
    constraint: Any = None  # a structured output's grammar state (tasks/engine/structured.RowConstraint)
    emit: Callable[[Event], None] = _drop
    cancelled: bool = False  # set by Engine.cancel from any thread; the engine drops the row at its next step
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class EngineStats:
    """Counters an engine keeps for /metrics and /health."""

    batches: int = 0
    tokens: int = 0  # tokens decoded for live rows (what generation really cost)
    cancelled: int = 0  # requests dropped because their client went away
    active: int = 0  # rows of the running batches


class GenerationEngine(Protocol):
    """The engine interface the HTTP layer depends on: submit a request, receive its events, cancel it."""

    context_length: int
    tokenizer: Any
    stats: EngineStats
    adapters: list[str]  # LoRA adapters served beside the base model, by name
    constraints: Any  # structured outputs' grammar compiler (tasks/engine/structured.py); None: not supported

    def submit(self, request: GenerationRequest) -> None:
        """Queue ``request`` or raise QueueFullError."""

    def cancel(self, request: GenerationRequest) -> None:
        """Stop generating for ``request`` (its client went away); no further events are emitted."""

    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
