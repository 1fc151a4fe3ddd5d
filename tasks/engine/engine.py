"""Generation engine: one model shared by concurrent requests through batching.

Requests wait in a bounded queue for a worker thread, which runs one of two schedulers (``scheduler``):

- ``continuous`` (the default where the model allows it): the folder's decoder is run directly with onnxruntime,
  each row in its own KV-cache slot (``SlotBatch``). Between decoding steps the worker prefills every waiting
  request into a free slot and emits its first token, so a new request never waits for running ones to end;
  finished rows leave at once. Rows of different LoRA adapters share steps, each answering with its own.
- ``batches``: onnxruntime-genai static batches (``static_batch.py``), for decoders the slot scheduler cannot drive (no
  GroupQueryAttention). The worker takes the waiting requests (the first waits up to ``batch_window_ms`` for
  company when nothing is running), splits them into batches that share sampling settings and fit the context
  window (``plan_batches``) and prefills each as one static batch (``ActiveBatch``). Running batches are decoded
  in turn, one token per batch per round, and new batches are admitted between rounds (up to
  ``max_running_batches``), so a request that arrives while a long batch runs starts without waiting for it.

The engine knows nothing of HTTP: the serving app talks to it through ``GenerationEngine`` (submit, events,
cancel); the gate's evaluation and the local batch executor hand it a set of requests (``run``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tasks.engine.output import Outputs
from tasks.engine.protocol import Done, EngineStats, Event, Failed, GenerationRequest, QueueFullError
from tasks.engine.scheduler import SlotBatch
from tasks.engine.settings import EngineConfig, available_cores
from tasks.engine.slots import SlotDecoder, SlotsUnsupported
from tasks.engine.static_batch import ActiveBatch, OgModel, plan_batches
from tasks.engine.structured import Constraints
from tasks.served_folder import ServedFolder

log = logging.getLogger(__name__)


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
        self.folder = ServedFolder.read(self.model_dir)
        self.context_length = self.folder.context_length
        self.adapters = list(self.folder.adapters)
        self.decoder = self._slot_decoder()
        self.og_model = None if self.decoder else OgModel(self.model_dir, self.config.threads)
        self.scheduler = "continuous" if self.decoder else "batches"
        self.tokenizer = load_tokenizer(self.model_dir)
        # structured outputs mask each row's scores: the slot scheduler picks tokens itself, onnxruntime-genai does not
        self.constraints = (Constraints(self.tokenizer, self.folder.vocab_size, self.folder.eos_ids)
                            if self.decoder else None)
        self.stats = EngineStats()
        self.on_batch: Callable[[int], None] | None = None
        self._outputs = Outputs(self.tokenizer, self.folder.eos_ids, self.stats)
        self._queue: queue.Queue[GenerationRequest] = queue.Queue(maxsize=self.config.max_queue)
        self._backlog: list[GenerationRequest] = []  # taken from the queue, waiting for a free slot
        self._stop = threading.Event()
        loop = self._loop_slots if self.decoder else self._loop
        self._worker = threading.Thread(target=loop, name="slmops-engine", daemon=True)
        self._worker.start()

    def _check(self, request: GenerationRequest) -> None:
        """Refuse a request that cannot fit the context window (callers cap ``max_tokens`` to the room left)."""
        if len(request.prompt_ids) + request.max_tokens > self.context_length or not request.prompt_ids:
            raise ValueError(f"a prompt of {len(request.prompt_ids)} tokens with max_tokens {request.max_tokens} "
                             f"does not fit the context window of {self.context_length} tokens")

    def _slot_decoder(self) -> SlotDecoder | None:
        """The slot decoder for the continuous scheduler, or None for onnxruntime-genai batches."""
        if self.config.scheduler == "batches":
            return None
        try:
            return SlotDecoder(self.model_dir, self.config.threads or available_cores(), self.folder.adapters,
                               int8=self.config.int8_steps)
        except SlotsUnsupported as exc:
            if self.config.scheduler == "continuous":
                raise ValueError(f"scheduler 'continuous' cannot serve {self.model_dir}: {exc}") from exc
            log.info("continuous batching unavailable (%s): using onnxruntime-genai batches", exc)
            return None

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request, or raise QueueFullError when the queue is at capacity."""
        self._check(request)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFullError from None

    def run(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[int, Done | Failed]]:
        """Decode ``requests`` (together, as the scheduler admits them) and yield ``(i, last event)`` for each as it
        ends — ``Done``, or ``Failed`` — in the order they end. Waits for room in the queue instead of refusing."""
        ends: queue.SimpleQueue[tuple[int, Done | Failed]] = queue.SimpleQueue()

        def receiver(i: int) -> Callable[[Event], None]:
            def emit(event: Event) -> None:
                if isinstance(event, Done | Failed):
                    ends.put((i, event))
            return emit

        for request in requests:
            self._check(request)
        for i, request in enumerate(requests):
            request.emit = receiver(i)
            self._queue.put(request)
        for _ in requests:
            yield ends.get()

    def cancel(self, request: GenerationRequest) -> None:
        """Drop ``request``: skipped if still queued, its row stops at the next decoding step if running."""
        request.cancelled = True

    def queue_depth(self) -> int:
        """Requests waiting for a batch (or a free slot)."""
        return self._queue.qsize() + len(self._backlog)

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

    def _loop_slots(self) -> None:
        batch: SlotBatch | None = None  # the running rows (dropped when none is left, which frees its cache)
        while not self._stop.is_set():
            self._backlog += self._gather(wait=not (self._backlog or batch), window=False)
            if batch is None and not self._backlog:
                continue
            batch = batch or SlotBatch(self._outputs, self.decoder, self.config.max_batch_size)
            self._admit_slots(batch)
            try:
                if batch.live and self.on_batch:
                    self.on_batch(len(batch.live))
                batch.step()
            except Exception as exc:  # a failed step must answer its callers, not kill the worker
                self._fail(batch.abandon(), exc)
            if not batch.live:
                batch = None

    def _admit_slots(self, batch: SlotBatch) -> None:
        """Prefill waiting requests, in arrival order, into the batch's free slots."""
        waiting, self._backlog = self._backlog, []
        live = [r for r in waiting if not r.cancelled]
        self.stats.cancelled += len(waiting) - len(live)
        admitted, self._backlog = live[: batch.free], live[batch.free:]
        if not admitted:
            return
        try:
            batch.admit(admitted)
        except Exception as exc:  # a failed prefill: its requests fail, the running rows go on
            running = {id(s.row.request) for s in batch.live}
            self._fail([r for r in admitted if id(r) not in running], exc)

    def _admit(self, waiting: list[GenerationRequest], running: list[ActiveBatch]) -> None:
        live = [r for r in waiting if not r.cancelled]
        self.stats.cancelled += len(waiting) - len(live)
        for requests in plan_batches(live, self.context_length, self.config.max_batch_size):
            if self.on_batch:
                self.on_batch(len(requests))
            try:
                running.append(ActiveBatch(self.og_model, self._outputs, requests))
            except Exception as exc:
                self._fail(requests, exc)

    @staticmethod
    def _fail(requests: list[GenerationRequest], exc: Exception) -> None:
        for request in requests:
            request.emit(Failed(f"generation failed: {exc}"))

    def _gather(self, wait: bool, window: bool = True) -> list[GenerationRequest]:
        """Waiting requests: with ``wait`` (nothing running) block for the first one and, with ``window``, give it
        company for up to ``batch_window_ms``; without, take only what is already queued."""
        try:
            batch = [self._queue.get(timeout=0.2) if wait else self._queue.get_nowait()]
        except queue.Empty:
            return []
        deadline = time.perf_counter() + (self.config.batch_window_ms / 1000 if wait and window else 0)
        while len(batch) < self.config.max_batch_size:
            try:
                remaining = deadline - time.perf_counter()
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch
