"""Served traffic as MLflow traces (off unless a sample rate and a tracking URI are set).

A sampled request becomes one ``CHAT_MODEL`` (or ``LLM``) trace when it finishes: input messages (or prompt) and
parameters, the completion as an OpenAI answer, token counts, TTFT and total latency as attributes, the model
name, version and route as trace tags and, when the server knows it, the MLflow logged model the version is
(``mlflow.modelId``), so the model's page lists its traffic. ``mlflow.search_traces()`` finds them.

Recording never touches the request: the route only puts a finished request in a bounded queue (``queue``
entries; beyond that new traces are dropped and counted), and one background thread writes them with MLflow's
synchronous exporter. A slow, hanging or absent tracking server only fills that queue; shutdown waits at most
``close_timeout_s`` for it. Bodies are recorded, headers and keys never are.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from tasks.engine.protocol import Done

log = logging.getLogger(__name__)


class TraceConfig(BaseModel, extra="forbid"):
    """Which share of served requests becomes MLflow traces, and where they go."""

    sample: float = Field(0.0, ge=0, le=1, description="Share of requests recorded as MLflow traces, 0–1 (0: off).")
    tracking_uri: str = Field("", description="MLflow tracking URI for traces ('': MLFLOW_TRACKING_URI; neither: "
                              "off).")
    experiment: str = Field("slmops-serving", min_length=1, description="MLflow experiment the traces go to "
                            "(made if absent).")
    model_id: str = Field("", description="MLflow logged model (m-…) of the served version: its traces show on "
                          "the model's page.")
    queue: int = Field(1000, gt=0, description="Finished requests waiting to be written at most; more are dropped "
                       "(slmops_traces_total{outcome=\"dropped\"}).")
    close_timeout_s: float = Field(5.0, ge=0, description="At shutdown, how long to wait for queued traces.")


TRACE_ENV = {"sample": "SLMOPS_TRACE_SAMPLE", "tracking_uri": "MLFLOW_TRACKING_URI",
             "model_id": "SLMOPS_TRACE_MODEL_ID", "experiment": "SLMOPS_TRACE_EXPERIMENT"}
"""Container environment variables of the fields a SageMaker endpoint sets (``trace_env``)."""


def trace_env(cfg: TraceConfig) -> dict[str, str]:
    """``cfg`` as a container's environment (nothing when tracing is off)."""
    if cfg.sample <= 0:
        return {}
    return {key: str(getattr(cfg, name)) for name, key in TRACE_ENV.items() if getattr(cfg, name)}


def trace_from_env(environ: Mapping[str, str]) -> TraceConfig:
    """The trace settings a container was given (``trace_env``); absent variables keep their defaults."""
    return TraceConfig.model_validate({name: environ[key] for name, key in TRACE_ENV.items() if environ.get(key)})


@dataclass(frozen=True)
class _Finished:
    endpoint: str
    inputs: dict[str, Any]
    done: Done
    start_ns: int
    end_ns: int


class Tracer:
    """Samples finished requests and writes them as MLflow traces off the event loop."""

    def __init__(self, cfg: TraceConfig, model: str, version: str):
        self.cfg, self.model, self.version = cfg, model, version
        self.uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        self.counts = {"recorded": 0, "dropped": 0, "failed": 0}
        self._queue: queue.Queue[_Finished | None] = queue.Queue(maxsize=cfg.queue)
        self._thread: threading.Thread | None = None
        if self.enabled:
            # this thread exports each trace itself: MLflow's own async queue would flush at exit, and wait on a
            # hanging server there
            os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
            self._thread = threading.Thread(target=self._write_loop, name="slmops-traces", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """True when some requests would be traced."""
        return self.cfg.sample > 0 and bool(self.uri)

    def hook(self, endpoint: str, body: Any) -> Callable[[Done], None] | None:
        """A callback queueing ``body`` and its answer as a trace when sampled (None when not sampled); call it
        when the request arrives, so the trace's latency is the request's."""
        if not self.enabled or random.random() >= self.cfg.sample:
            return None
        start_ns = time.time_ns()
        inputs = ({"messages": [m.as_template_input() for m in body.messages]} if hasattr(body, "messages")
                  else {"prompt": body.text})
        inputs |= {k: v for k in ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop")
                   if (v := getattr(body, k, None)) is not None}

        def record(done: Done) -> None:
            try:
                self._queue.put_nowait(_Finished(endpoint, inputs, done, start_ns, time.time_ns()))
            except queue.Full:
                self.counts["dropped"] += 1

        return record

    def close(self) -> None:
        """Write what is queued, waiting at most ``close_timeout_s``, and stop the writer."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=self.cfg.close_timeout_s)
        except queue.Full:
            return
        self._thread.join(self.cfg.close_timeout_s)

    # -- writer thread ----------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        experiment_id = None
        while (item := self._queue.get()) is not None:
            try:
                experiment_id = experiment_id or self._experiment()
                self._write(item, experiment_id)
                self.counts["recorded"] += 1
            except Exception as exc:  # tracing must never break serving
                self.counts["failed"] += 1
                log.warning("trace of a %s request not recorded: %s", item.endpoint, exc)

    def _experiment(self) -> str:
        # MLflow loads in the writer thread, on the first traced request: a server that does not trace never pays
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient(self.uri)
        found = client.get_experiment_by_name(self.cfg.experiment)
        return found.experiment_id if found else client.create_experiment(self.cfg.experiment)

    def _write(self, item: _Finished, experiment_id: str) -> None:
        import mlflow
        from mlflow.entities import SpanType
        from mlflow.tracing.constant import SpanAttributeKey, TraceMetadataKey

        done, chat = item.done, "messages" in item.inputs
        tags = {"slmops.model": self.model, "slmops.version": self.version, "slmops.endpoint": item.endpoint}
        metadata = {TraceMetadataKey.MODEL_ID: self.cfg.model_id} if self.cfg.model_id else None
        span = mlflow.start_span_no_context(
            name=f"{self.model} {item.endpoint}", span_type=SpanType.CHAT_MODEL if chat else SpanType.LLM,
            inputs=item.inputs, tags=tags, metadata=metadata, experiment_id=experiment_id,
            start_time_ns=item.start_ns,
            attributes={"ttft_ms": round(1000 * done.ttft_s, 3),
                        "latency_ms": round((item.end_ns - item.start_ns) / 1e6, 3),
                        "finish_reason": done.finish_reason, "model": self.model, "version": self.version,
                        SpanAttributeKey.CHAT_USAGE: {
                            "input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens,
                            "total_tokens": done.prompt_tokens + done.completion_tokens}})
        answer = ({"message": {"role": "assistant", "content": done.text}} if chat else {"text": done.text})
        span.end(outputs={"choices": [{"index": 0, **answer, "finish_reason": done.finish_reason}],
                          "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                                    "total_tokens": done.prompt_tokens + done.completion_tokens}},
                 end_time_ns=item.end_ns)
