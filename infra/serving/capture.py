"""Data capture (off by default, like SageMaker's DataCaptureConfig): a sampled share of request and response
bodies as JSONL in a directory or under an ``s3://`` prefix — never headers, keys or tokens of the caller.

Each line is a valid ``slmops batch`` input row, so yesterday's traffic can be replayed and drift-checked::

    {"id": "cap-…", "captured_at": "…", "messages": [...] | "prompt": "…",
     "response": {"text": "…", "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 4},
     "metadata": {"endpoint": "/v1/chat/completions", "model": "…", "version": "…", "max_tokens": 16, …}}

Lines are written by one background thread: local files are appended and flushed per line
(``capture-YYYYMMDD-HH-<pid>.jsonl``); for S3, lines are buffered and uploaded as a new object every
``flush_every_s`` (and at shutdown) under ``prefix/YYYY/MM/DD/``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.engine.protocol import Done

log = logging.getLogger(__name__)


class CaptureConfig(BaseModel, extra="forbid"):
    """Which share of traffic to keep, and where."""

    percent: float = Field(0.0, ge=0, le=100, description="Share of requests captured, 0–100 (0: off).")
    destination: str = Field("", description="Directory or s3://bucket/prefix for the JSONL files ('' : off).")
    flush_every_s: float = Field(10.0, gt=0, description="S3: upload buffered lines this often (and at exit).")

    @property
    def enabled(self) -> bool:
        """True when something would be captured."""
        return self.percent > 0 and bool(self.destination)


class Capture:
    """Samples finished requests and writes them off the event loop."""

    def __init__(self, cfg: CaptureConfig, model: str, version: str):
        self.cfg, self.model, self.version = cfg, model, version
        self.captured = 0
        self._lines: queue.Queue[dict | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if cfg.enabled:
            self._thread = threading.Thread(target=self._write_loop, name="slmops-capture", daemon=True)
            self._thread.start()

    def hook(self, endpoint: str, body: Any) -> Callable[[Done], None] | None:
        """A callback recording ``body`` and its answer when sampled (None when this request is not sampled)."""
        if not self.cfg.enabled or random.random() * 100 >= self.cfg.percent:
            return None
        request = {"messages": [m.as_template_input() for m in body.messages]} \
            if hasattr(body, "messages") else {"prompt": body.text}
        params = {k: getattr(body, k, None) for k in ("max_tokens", "max_completion_tokens", "temperature",
                                                     "top_p", "seed", "stop", "min_tokens")}

        def record(done: Done) -> None:
            self._lines.put({"id": f"cap-{uuid.uuid4().hex}", "captured_at": datetime.now(UTC).isoformat(),
                             **request,
                             "response": {"text": done.text, "finish_reason": done.finish_reason,
                                          "prompt_tokens": done.prompt_tokens,
                                          "completion_tokens": done.completion_tokens},
                             "metadata": {"endpoint": endpoint, "model": self.model, "version": self.version,
                                          **{k: v for k, v in params.items() if v is not None}}})

        return record

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued and stop the writer."""
        if self._thread is not None:
            self._lines.put(None)
            self._thread.join(timeout_s)

    # -- writer thread ----------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        s3 = self.cfg.destination.startswith("s3://")
        buffer: list[str] = []
        last_upload = time.monotonic()
        while True:
            try:
                line = self._lines.get(timeout=1.0)
                stop = line is None
            except queue.Empty:
                line, stop = None, False
            if line is not None:
                text = json.dumps(line, ensure_ascii=False) + "\n"
                if s3:
                    buffer.append(text)
                else:
                    self._append_local(text)
                self.captured += 1
            if s3 and buffer and (stop or time.monotonic() - last_upload >= self.cfg.flush_every_s):
                self._upload(buffer)
                buffer, last_upload = [], time.monotonic()
            if stop:
                return

    def _append_local(self, text: str) -> None:
        folder = Path(self.cfg.destination)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"capture-{datetime.now(UTC):%Y%m%d-%H}-{os.getpid()}.jsonl"
        with open(folder / name, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    def _upload(self, lines: list[str]) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, prefix = self.cfg.destination[5:].partition("/")
        now = datetime.now(UTC)
        key = f"{prefix.strip('/')}/{now:%Y/%m/%d}/capture-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.jsonl"
        try:
            boto3.client("s3").put_object(Bucket=bucket, Key=key.lstrip("/"), Body="".join(lines).encode())
        except (BotoCoreError, ClientError) as exc:  # capture must never break serving
            log.error("data capture: %d lines not uploaded to s3://%s/%s: %s", len(lines), bucket, key, exc)
