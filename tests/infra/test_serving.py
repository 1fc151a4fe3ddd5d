"""The serving runtime as a real process on 127.0.0.1: OpenAI client, SageMaker contract, errors, load."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from infra import process

NAME = "tiny-slm"


def start_server(model: Path, log: Path, *extra: str, api_key: str | None = None) -> tuple[str, int]:
    port = process.free_port()
    env = {"SLMOPS_TEST_KEY": api_key or ""}
    pid = process.start(["-m", "infra.serving", str(model), "--name", NAME, "--version", "7", "--port", str(port),
                         "--api-key-env", "SLMOPS_TEST_KEY", "--max-tokens", "16", *extra], log, env)
    process.wait_healthy(f"http://127.0.0.1:{port}/ping", pid, log, 120)
    return f"http://127.0.0.1:{port}", pid


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, pid = start_server(tiny_onnx, tmp_path_factory.mktemp("srv") / "server.log", "--max-queue", "512")
    yield url
    process.stop(pid)


def chat_body(**kw) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": "Reverse: a b c"}], "max_tokens": 6} | kw


def test_openai_client_chat_streaming_and_not(server: str) -> None:
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == [NAME]
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Reverse: a b c"}],
                                           max_tokens=6, temperature=0)
    text = reply.choices[0].message.content
    assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Reverse: a b c"}],
                                            max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: same answer both ways
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    completion = client.completions.create(model=NAME, prompt="a b c", max_tokens=4)
    assert completion.usage.completion_tokens <= 4


def test_sampling_seed_and_stop(server: str) -> None:
    body = chat_body(temperature=1.0, top_p=0.9, seed=11, max_tokens=8)
    a = httpx.post(f"{server}/v1/chat/completions", json=body).json()
    b = httpx.post(f"{server}/v1/chat/completions", json=body).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    greedy = httpx.post(f"{server}/v1/chat/completions", json=chat_body(max_tokens=8)).json()
    text = greedy["choices"][0]["message"]["content"]
    if len(text) > 1:
        stopped = httpx.post(f"{server}/v1/chat/completions", json=chat_body(max_tokens=8, stop=[text[1:]])).json()
        assert stopped["choices"][0]["message"]["content"] == text[:1]
        assert stopped["choices"][0]["finish_reason"] == "stop"


def test_sagemaker_ping_and_invocations(server: str) -> None:
    assert httpx.get(f"{server}/ping").status_code == 200
    one = httpx.post(f"{server}/invocations", json=chat_body())
    assert one.status_code == 200 and one.json()["object"] == "chat.completion"
    lines = [chat_body(max_tokens=2), {"prompt": "a b", "max_tokens": 3}, {"nonsense": 1}, chat_body(max_tokens=1)]
    body = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    many = httpx.post(f"{server}/invocations", content=body, headers={"Content-Type": "application/jsonlines"})
    answers = [json.loads(line) for line in many.text.splitlines()]
    assert [a.get("object") for a in answers] == ["chat.completion", "text_completion", None, "chat.completion", None]
    assert answers[0]["usage"]["completion_tokens"] <= 2 and answers[3]["usage"]["completion_tokens"] <= 1
    assert "line 3: invocation needs 'messages'" in answers[2]["error"]["message"]
    assert "line 5: invalid JSON" in answers[4]["error"]["message"]


@pytest.mark.parametrize(("body", "expected"), [
    ("{not json", "invalid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"messages": []}, "messages: List should have at least 1 item"),
    ({"max_tokens": 4}, "messages: Field required"),
    (chat_body(model="gpt-4"), "unknown model 'gpt-4'; this server serves 'tiny-slm'"),
    (chat_body(max_tokens=-1), "max_tokens: Input should be greater than or equal to 1"),
    (chat_body(max_tokens="ten"), "max_tokens: Input should be a valid integer"),
    (chat_body(temperature=3), "temperature: Input should be less than or equal to 2"),
    (chat_body(top_p=0), "top_p: Input should be greater than 0"),
    (chat_body(messages=[{"role": "robot", "content": "x"}]), "messages.0.role: Input should be 'system'"),
    (chat_body(messages=[{"role": "user", "content": 5}]), "messages.0.content: Input should be a valid string"),
    (chat_body(stream="yes"), "stream: Input should be a valid boolean"),
    (chat_body(n=2), "n: Input should be less than or equal to 1"),
    (chat_body(stop=["a", "b", "c", "d", "e"]), "stop: at most 4 non-empty sequences"),
    (chat_body(max_tokens=100000), "exceeds the context window of 128 tokens"),
    (chat_body(max_tokens=4, min_tokens=8), "min_tokens 8 exceeds max_tokens 4"),
    (chat_body(messages=[{"role": "user", "content": "a " * 400}]), "exceeds the context window of 128 tokens"),
])
def test_bad_payloads_get_400_with_a_message(server: str, body, expected: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{server}/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert expected in r.json()["error"]["message"]


def test_16_clients_by_50_requests_without_errors(server: str) -> None:
    def client(i: int) -> list[int]:
        with httpx.Client(timeout=120) as http:
            return [http.post(f"{server}/v1/chat/completions", json=chat_body(max_tokens=3)).status_code
                    for _ in range(50)]

    with cf.ThreadPoolExecutor(16) as pool:
        codes = [c for batch in pool.map(client, range(16)) for c in batch]
    assert len(codes) == 800 and set(codes) == {200}
    metrics = httpx.get(f"{server}/metrics").text
    assert 'slmops_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
    assert "slmops_queue_depth" in metrics and "slmops_request_latency_seconds_bucket" in metrics
    batches = [line for line in metrics.splitlines() if line.startswith("slmops_batch_size_sum")]
    count = [line for line in metrics.splitlines() if line.startswith("slmops_batch_size_count")]
    assert float(batches[0].split()[-1]) > float(count[0].split()[-1]), "concurrent requests were batched"


@pytest.fixture(scope="module")
def slow_onnx(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider random model with a 1024-token window: a request can keep the engine busy for a while."""
    from tasks.config import QuantizeConfig
    from tasks.demo import ModelShape, make_model
    from tasks.inputs import describe_model
    from tasks.quantize import build_onnx

    folder = tmp_path_factory.mktemp("slow")
    shape = ModelShape(hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=1024, max_positions=1024)
    make_model(shape, tiny_assets / "tokenizer", folder / "hf", seed=0)
    return build_onnx(describe_model(str(folder / "hf")), "int4", QuantizeConfig(), folder / "onnx").path


def test_queue_full_answers_503_with_retry_after(slow_onnx: str, tmp_path: Path) -> None:
    url, pid = start_server(Path(slow_onnx), tmp_path / "s.log", "--max-queue", "1", "--max-batch-size", "1")
    try:
        clients = 8
        start = threading.Barrier(clients)

        def call(_: int) -> httpx.Response:
            with httpx.Client(timeout=120) as http:
                http.get(f"{url}/ping")  # connect first, so all requests arrive together after the barrier
                start.wait(timeout=60)
                # min_tokens keeps every request decoding 800 tokens, so the one-slot queue must overflow
                return http.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=800, min_tokens=800))

        with cf.ThreadPoolExecutor(clients) as pool:
            responses = list(pool.map(call, range(clients)))
        busy = [r for r in responses if r.status_code == 503]
        assert busy and all(r.headers["Retry-After"] == "1" for r in busy)
        assert "queue is full" in busy[0].json()["error"]["message"]
        served = [r for r in responses if r.status_code == 200]
        assert served and all(r.json()["usage"]["completion_tokens"] == 800 for r in served)
    finally:
        process.stop(pid)


def test_api_key(tiny_onnx: Path, tmp_path: Path) -> None:
    url, pid = start_server(tiny_onnx, tmp_path / "s.log", api_key="s3cret")
    try:
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body()).status_code == 401
        bad = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "API key" in bad.json()["error"]["message"]
        client = OpenAI(base_url=f"{url}/v1", api_key="s3cret")
        assert client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}],
                                              max_tokens=2).choices
        assert httpx.get(f"{url}/ping").status_code == 200  # SageMaker health checks carry no key
        assert "s3cret" not in (tmp_path / "s.log").read_text()
    finally:
        process.stop(pid)
    assert not process.alive(pid)
    assert os.environ.get("SLMOPS_TEST_KEY") is None
