"""Generation engine: one onnxruntime-genai model shared by concurrent requests through request batching.

Requests wait in a bounded queue. A worker thread takes the waiting requests (the first waits up to
``batch_window_ms`` for company when nothing is running), splits them into batches that share sampling settings
and fit the context window (``plan_batches``) and prefills each as one static batch (``ActiveBatch``). Running
batches are decoded in turn, one token per batch per round, and new batches are admitted between rounds (up to
``max_running_batches``), so a request that arrives while a long batch runs starts at once instead of waiting
for it to end. The engine knows nothing of HTTP: the serving app talks to it through ``GenerationEngine``
(submit, events, cancel).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from infra.serving.batch import ActiveBatch, BatchRun, TokenText, plan_batches
from infra.serving.protocol import EngineStats, Failed, GenerationRequest, QueueFullError
from tasks.decoding import OgModel


class EngineConfig(BaseModel, extra="forbid"):
    """Batching and queueing of the generation engine."""

    max_batch_size: int = Field(8, gt=0, description="Requests decoded together in one batch at most.")
    max_queue: int = Field(64, gt=0, description="Requests waiting for the engine before new ones get 503.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long the first waiting request waits for company.")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 uses every available core.")
    max_running_batches: int = Field(4, gt=0, description="Batches decoded in turn: a request arriving while "
                                     "others run starts its own batch at once (1: one static batch at a time).")


def load_tokenizer(model_dir: Path) -> Any:
    """The folder's fast tokenizer (``tokenizer.json``, which every onnxruntime-genai folder has).

    ``PreTrainedTokenizerFast`` directly, not ``AutoTokenizer``: the auto classes import torch (~2.5 s of every
    server start); the fast tokenizer is the same object without it. Without a tokenizer.json: ``AutoTokenizer``.
    """
    if (model_dir / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


class Engine:
    """Owns the model, the tokenizer and the worker thread."""

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.model_dir = Path(model_dir)
        self.og_model = OgModel(self.model_dir, self.config.threads)
        self.context_length = self.og_model.context_length
        self.adapters = list(self.og_model.adapter_files)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.stats = EngineStats()
        self.on_batch: Callable[[int], None] | None = None
        self._runner = BatchRun(self.og_model, self.tokenizer, TokenText(self.tokenizer), self.stats)
        self._queue: queue.Queue[GenerationRequest] = queue.Queue(maxsize=self.config.max_queue)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="slmops-engine", daemon=True)
        self._worker.start()

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request, or raise QueueFullError when the queue is at capacity."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFullError from None

    def cancel(self, request: GenerationRequest) -> None:
        """Drop ``request``: skipped if still queued, its row stops at the next decoding step if running."""
        request.cancelled = True

    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop the worker after the batch in progress."""
        self._stop.set()

    def _loop(self) -> None:
        running: list[ActiveBatch] = []
        while not self._stop.is_set():
            if len(running) < self.config.max_running_batches:
                self._admit(self._gather(wait=not running), running)
            for batch in list(running):
                try:
                    finished = batch.step()
                except Exception as exc:  # a failed batch must answer its callers, not kill the worker
                    self._fail(batch.unfinished(), exc)
                    batch.abandon()
                    finished = True
                if finished:
                    running.remove(batch)

    def _admit(self, waiting: list[GenerationRequest], running: list[ActiveBatch]) -> None:
        live = [r for r in waiting if not r.cancelled]
        self.stats.cancelled += len(waiting) - len(live)
        for requests in plan_batches(live, self.context_length, self.config.max_batch_size):
            if self.on_batch:
                self.on_batch(len(requests))
            try:
                running.append(self._runner.start(requests))
            except Exception as exc:
                self._fail(requests, exc)

    @staticmethod
    def _fail(requests: list[GenerationRequest], exc: Exception) -> None:
        for request in requests:
            request.emit(Failed(f"generation failed: {exc}"))

    def _gather(self, wait: bool) -> list[GenerationRequest]:
        """Waiting requests: with ``wait`` (nothing running) block for the first one and give it company for up to
        ``batch_window_ms``; without, take only what is already queued."""
        try:
            batch = [self._queue.get(timeout=0.2) if wait else self._queue.get_nowait()]
        except queue.Empty:
            return []
        deadline = time.perf_counter() + (self.config.batch_window_ms / 1000 if wait else 0)
        while len(batch) < self.config.max_batch_size:
            try:
                remaining = deadline - time.perf_counter()
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch
