"""Generation engine: one onnxruntime-genai model shared by concurrent requests through request batching.

Requests wait in a bounded queue. A single worker thread takes the first waiting request, gathers more
for up to ``batch_window_ms`` (at most ``max_batch_size``), groups them by sampling settings and runs each
group as one left-padded onnxruntime-genai batch, streaming every row's text back to its caller.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class QueueFullError(Exception):
    """The request queue is at capacity; the caller should retry later."""


@dataclass
class Sampling:
    """Sampling settings shared by every row of one batch."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0

    def key(self) -> tuple:
        """Requests with equal keys may share a batch."""
        return (self.temperature, self.top_p, self.seed, self.min_tokens)


@dataclass
class Request:
    """One generation request and the callback that receives its events."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    emit: Callable[[str, dict], None]  # ("delta", {"text"}) … then ("done", {"finish_reason", "usage", …})
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Row:
    request: Request
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    first_token_s: float | None = None


class Engine:
    """Owns the model, the tokenizer and the worker thread."""

    def __init__(self, model_dir: str | Path, max_batch_size: int = 8, max_queue: int = 64,
                 batch_window_ms: float = 5.0, on_batch: Callable[[int], None] | None = None):
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        config = json.loads((self.model_dir / "genai_config.json").read_text())
        self.context_length = int(config["model"]["context_length"])
        self.eos_ids = set(np.atleast_1d(config["model"]["eos_token_id"]).tolist())
        self._og = og
        self.model = og.Model(str(self.model_dir))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_batch_size = max_batch_size
        self.batch_window = batch_window_ms / 1000
        self.queue: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="slmops-engine", daemon=True)
        self._worker.start()

    # -- public -------------------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a conversation rendered with the model's chat template, ready for the answer."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def submit(self, request: Request) -> None:
        """Queue a request, or raise QueueFullError when the queue is at capacity."""
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise QueueFullError from None

    def close(self) -> None:
        """Stop the worker after the batch in progress."""
        self._stop.set()

    # -- worker -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.perf_counter() + self.batch_window
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self.queue.get(timeout=max(deadline - time.perf_counter(), 0)))
                except queue.Empty:
                    break
            groups: dict[tuple, list[Request]] = {}
            for request in batch:
                groups.setdefault(request.sampling.key(), []).append(request)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as exc:  # a failed batch must answer its callers, not kill the worker
                    for request in group:
                        request.emit("error", {"message": f"generation failed: {exc}"})

    def _run(self, group: list[Request]) -> None:
        og = self._og
        if self._on_batch:
            self._on_batch(len(group))
        width = max(len(r.prompt_ids) for r in group)
        budget = max(r.max_tokens for r in group)
        ids = np.full((len(group), width), self.pad_id, dtype=np.int32)
        for i, r in enumerate(group):
            ids[i, width - len(r.prompt_ids):] = r.prompt_ids
        sampling = group[0].sampling
        params = og.GeneratorParams(self.model)
        options = dict(max_length=width + budget, batch_size=len(group), do_sample=sampling.temperature > 0)
        if sampling.min_tokens:
            options["min_length"] = width + sampling.min_tokens
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.seed is not None:
            options["random_seed"] = sampling.seed
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        rows = [_Row(r) for r in group]
        start = time.perf_counter()
        while not all(row.done for row in rows) and not generator.is_done():
            generator.generate_next_token()
            next_tokens = generator.get_next_tokens()
            for i, row in enumerate(rows):
                if not row.done:
                    self._advance(row, int(next_tokens[i]), start)
        for row in rows:
            if not row.done:
                self._finish(row, "length")

    def _advance(self, row: _Row, token: int, start: float) -> None:
        if row.first_token_s is None:
            row.first_token_s = time.perf_counter() - row.request.enqueued
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        for stop in row.request.stop:
            cut = text.find(stop)
            if cut != -1:
                self._emit_delta(row, text[:cut])
                self._finish(row, "stop")
                return
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self._emit_delta(row, text)
        if len(row.tokens) >= row.request.max_tokens:
            self._finish(row, "length")

    @staticmethod
    def _emit_delta(row: _Row, text: str) -> None:
        if len(text) > len(row.text) and text.startswith(row.text):
            row.request.emit("delta", {"text": text[len(row.text):]})
            row.text = text

    @staticmethod
    def _finish(row: _Row, reason: str) -> None:
        row.done = True
        row.request.emit("done", {"finish_reason": reason, "text": row.text,
                                  "usage": {"prompt_tokens": len(row.request.prompt_ids),
                                            "completion_tokens": len(row.tokens)},
                                  "ttft_s": row.first_token_s or 0.0})
