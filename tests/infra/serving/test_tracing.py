"""Served traffic as MLflow traces (infra/serving/tracing.py), on real server processes on 127.0.0.1: sampled
requests reach the tracking store with their messages, answer, token counts and latency; a tracking server that
never answers slows and fails no request, and does not hold up shutdown."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from infra import process
from infra.serving.schemas import CompletionRequest
from infra.serving.tracing import TraceConfig, Tracer
from tests.infra.serving.conftest import NAME, chat_body, metric, start_server


def _traces(uri: str, expected: int, timeout_s: float = 60) -> list:
    client = MlflowClient(uri)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("slmops-serving")
        if experiment is not None:
            found = client.search_traces(locations=[experiment.experiment_id], max_results=100)
            if len(found) >= expected:
                return found
        time.sleep(0.5)
    raise AssertionError(f"fewer than {expected} traces reached {uri} in {timeout_s} s")


def test_sampled_requests_become_traces(tiny_onnx: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'traces.db'}"
    MlflowClient(uri).search_experiments()  # the store's tables exist before two processes open it
    url, pid = start_server(tiny_onnx, tmp_path / "server.log", "--trace-sample", "1", "--trace-tracking-uri", uri,
                            "--trace-model-id", "m-0123456789abcdef")
    try:
        whole = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), timeout=60).json()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat_body(stream=True), timeout=60) as reply:
            assert reply.status_code == 200 and "[DONE]" in reply.read().decode()
        httpx.post(f"{url}/v1/completions", json={"model": NAME, "prompt": "a b", "max_tokens": 4}, timeout=60)
        traces = _traces(uri, 3)
        assert metric(httpx.get(f"{url}/metrics").text, "slmops_traces_total", outcome="recorded") == 3
    finally:
        process.stop(pid)
    assert len(traces) == 3
    for trace in traces:
        assert trace.info.tags["slmops.model"] == NAME and trace.info.tags["slmops.version"] == "7"
        assert trace.info.trace_metadata["mlflow.modelId"] == "m-0123456789abcdef"
    assert sorted(t.info.tags["slmops.endpoint"] for t in traces) == ["/v1/chat/completions"] * 2 + ["/v1/completions"]
    chats = [t for t in traces if t.info.tags["slmops.endpoint"] == "/v1/chat/completions"]
    answers = [c.data.spans[0].outputs["choices"][0]["message"]["content"] for c in chats]
    assert answers == [whole["choices"][0]["message"]["content"]] * 2  # streamed or not, one answer
    span = chats[0].data.spans[0]
    assert span.inputs["messages"] == chat_body()["messages"] and span.inputs["max_tokens"] == 6
    usage = span.get_attribute("mlflow.chat.tokenUsage")
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 6
    assert 0 < span.get_attribute("ttft_ms") <= span.get_attribute("latency_ms")
    assert chats[0].info.token_usage["output_tokens"] == usage["output_tokens"]  # MLflow's trace-level count


def test_a_hanging_tracking_server_slows_no_request(tiny_onnx: Path, tmp_path: Path) -> None:
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # connections are accepted by the kernel and never answered
    uri = f"http://127.0.0.1:{hang.getsockname()[1]}"
    url, pid = start_server(tiny_onnx, tmp_path / "server.log", "--trace-sample", "1", "--trace-tracking-uri", uri,
                            "--trace-queue", "2", "--trace-close-timeout-s", "1")
    try:
        httpx.post(f"{url}/v1/chat/completions", json=chat_body(), timeout=60)  # warm
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: httpx.post(f"{url}/v1/chat/completions", json=chat_body(),
                                                         timeout=30), range(12)))
        elapsed = time.monotonic() - started
        assert [r.status_code for r in replies] == [200] * 12
        assert elapsed < 20, f"12 small requests took {elapsed:.1f} s with tracing to a hanging server"
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "slmops_traces_total", outcome="recorded") == 0
        assert metric(text, "slmops_traces_total", outcome="dropped") >= 12 + 1 - 2 - 1  # queue 2, one being written
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        stopping = time.monotonic()
        process.stop(pid)
        stop_s = time.monotonic() - stopping
        hang.close()
    assert stop_s < 15, f"shutdown waited {stop_s:.1f} s on the hanging tracking server"


@pytest.mark.parametrize(("cfg", "env", "on"), [({}, "sqlite:///x.db", False), ({"sample": 1}, None, False),
                                                 ({"sample": 1}, "sqlite:///x.db", True),
                                                 ({"sample": 1, "tracking_uri": "http://h:5000"}, None, True)])
def test_tracing_needs_a_sample_rate_and_a_tracking_uri(cfg: dict, env: str | None, on: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")  # restored after an enabled tracer turns it off
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracer = Tracer(TraceConfig(**cfg, queue=1, close_timeout_s=0), NAME, "1")
    try:
        assert tracer.enabled is on
        assert (tracer.hook("/v1/completions", CompletionRequest(prompt="a", max_tokens=1)) is not None) is on
    finally:
        tracer.close()
