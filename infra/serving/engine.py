"""Generation engine: one onnxruntime-genai model shared by concurrent requests through request batching.

Requests wait in a bounded queue. A worker thread takes the first waiting request, gathers more for up to
``batch_window_ms`` (at most ``max_batch_size``), splits them into batches that share sampling settings and fit
the context window (``plan_batches``) and runs each as one static batch (``BatchRun``), streaming every row's
events back to its caller. The engine knows nothing of HTTP: the serving app talks to it through
``GenerationEngine`` (submit, events, cancel), so an iteration-level scheduler can replace this one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from infra.serving.batch import BatchRun, TokenText, plan_batches
from infra.serving.protocol import EngineStats, Failed, GenerationRequest, QueueFullError
from tasks.decoding import OgModel


class EngineConfig(BaseModel, extra="forbid"):
    """Batching and queueing of the generation engine."""

    max_batch_size: int = Field(8, gt=0, description="Requests decoded together in one batch at most.")
    max_queue: int = Field(64, gt=0, description="Requests waiting for the engine before new ones get 503.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long the first waiting request waits for company.")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 uses every available core.")


class Engine:
    """Owns the model, the tokenizer and the worker thread."""

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None):
        from transformers import AutoTokenizer

        self.config = config or EngineConfig()
        self.model_dir = Path(model_dir)
        self.og_model = OgModel(self.model_dir, self.config.threads)
        self.context_length = self.og_model.context_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
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
        while not self._stop.is_set():
            waiting = self._gather()
            live = [r for r in waiting if not r.cancelled]
            self.stats.cancelled += len(waiting) - len(live)
            for batch in plan_batches(live, self.context_length, self.config.max_batch_size):
                if self.on_batch:
                    self.on_batch(len(batch))
                try:
                    self._runner.run(batch)
                except Exception as exc:  # a failed batch must answer its callers, not kill the worker
                    for request in batch:
                        request.emit(Failed(f"generation failed: {exc}"))

    def _gather(self) -> list[GenerationRequest]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.perf_counter() + self.config.batch_window_ms / 1000
        while len(batch) < self.config.max_batch_size:
            try:
                batch.append(self._queue.get(timeout=max(deadline - time.perf_counter(), 0)))
            except queue.Empty:
                break
        return batch
