"""Generation engine: one onnxruntime-genai model shared by concurrent requests through request batching.

Requests wait in a bounded queue. A worker thread takes the first waiting request, gathers more for up to
``batch_window_ms`` (at most ``max_batch_size``), splits them into batches that share sampling settings and fit
the context window (``plan_batches``) and runs each as one static batch (``BatchRun``), streaming every row's
events back to its caller. The engine knows nothing of HTTP: the serving app talks to it through
``GenerationEngine`` (submit, events, cancel), so an iteration-level scheduler can replace this one.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from infra.serving.batch import BatchRun, TokenText, plan_batches
from infra.serving.protocol import EngineStats, Failed, GenerationRequest, QueueFullError


class EngineConfig(BaseModel, extra="forbid"):
    """Batching and queueing of the generation engine."""

    max_batch_size: int = Field(8, gt=0, description="Requests decoded together in one batch at most.")
    max_queue: int = Field(64, gt=0, description="Requests waiting for the engine before new ones get 503.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long the first waiting request waits for company.")


class Engine:
    """Owns the model, the tokenizer and the worker thread."""

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None):
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        self.config = config or EngineConfig()
        self.model_dir = Path(model_dir)
        genai = json.loads((self.model_dir / "genai_config.json").read_text())["model"]
        self.context_length = int(genai["context_length"])
        self.eos_ids = set(np.atleast_1d(genai["eos_token_id"]).tolist())
        # onnxruntime-genai masks the model's own pad id; the tokenizer's may differ (or be a real token)
        self.pad_id = int(genai.get("pad_token_id", min(self.eos_ids)))
        self.model = og.Model(str(self.model_dir))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.stats = EngineStats()
        self.on_batch: Callable[[int], None] | None = None
        self._runner = BatchRun(og, self.model, self.tokenizer, TokenText(self.tokenizer), self.eos_ids, self.pad_id,
                                self.stats)
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
