"""The serving runtime under concurrent load: window-filling batches, a full queue, clients that hang up."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from infra import process
from tests.infra.serving.conftest import NAME, chat_body, metric, start_server


def words(n: int) -> str:
    return " ".join(itertools.islice(itertools.cycle("abcdefghij"), n))


def test_16_clients_mixing_full_windows_never_fail(random_onnx: Path, tmp_path: Path) -> None:
    """Requests each valid alone stay valid in any batch: long prompts with small budgets, short prompts with large
    ones and budgets beyond the window share the engine; a static batch of all of them would not fit in 128."""
    from transformers import AutoTokenizer

    from tasks.data.chat import render_ids

    tokenizer = AutoTokenizer.from_pretrained(str(random_onnx))

    def request(kind: int, size: int) -> dict:
        content = words(95 + size) if kind == 0 else words(1 + size)
        length = len(render_ids(tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True))
        max_tokens = [128 - length, 128 - length - size, 100_000][kind]  # fill the window / nearly / far beyond
        return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0}

    url, pid = start_server(random_onnx, tmp_path / "s.log", "--max-queue", "512", "--max-batch-size", "8",
                            "--batch-window-ms", "20")
    clients, per_client = 16, 5
    barrier = threading.Barrier(clients)

    def client(i: int) -> list[tuple[dict, httpx.Response]]:
        bodies = [request((i + j) % 3, (7 * i + 3 * j) % 9) for j in range(per_client)]
        with httpx.Client(timeout=300) as http:
            barrier.wait(timeout=60)
            return [(body, http.post(f"{url}/v1/chat/completions", json=body)) for body in bodies]

    try:
        with cf.ThreadPoolExecutor(clients) as pool:
            results = [pair for pairs in pool.map(client, range(clients)) for pair in pairs]
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        process.stop(pid)
    errors = [(r.status_code, r.text[:200]) for _, r in results if r.status_code != 200]
    print(f"\n16-client test: {clients} clients, {len(results)} requests, {len(errors)} errors")
    assert len(results) == clients * per_client and errors == []
    for body, response in results:
        usage, choice = response.json()["usage"], response.json()["choices"][0]
        assert usage["completion_tokens"] <= body["max_tokens"]  # each row stops at its own budget
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= 128
        if choice["finish_reason"] == "length":
            assert usage["completion_tokens"] == min(body["max_tokens"], 128 - usage["prompt_tokens"])
    # requests shared decoding steps (how many depends on timing): more than one row per step on average
    assert metric(metrics, "slmops_batch_size_sum") > 1.5 * metric(metrics, "slmops_batch_size_count")


def test_queue_full_answers_503_with_retry_after(slow_onnx: Path, tmp_path: Path) -> None:
    url, pid = start_server(slow_onnx, tmp_path / "s.log", "--max-queue", "1", "--max-batch-size", "1")
    try:
        clients = 8
        start = threading.Barrier(clients)

        def call(_: int) -> httpx.Response:
            with httpx.Client(timeout=300) as http:
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


def wait_for(condition: Callable[[], bool], timeout_s: float = 60, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(poll_s)


def test_a_client_that_hangs_up_stops_its_generation(slow_onnx: Path, tmp_path: Path) -> None:
    url, pid = start_server(slow_onnx, tmp_path / "s.log")
    long = chat_body(max_tokens=1000, min_tokens=1000)

    def scrape(name: str) -> float:
        return metric(httpx.get(f"{url}/metrics").text, name)

    try:
        # a streaming client reads two chunks of a 1000-token answer, then closes the connection
        with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/v1/chat/completions",
                                                            json=long | {"stream": True}) as stream:
            received = [line for _, line in zip(range(4), stream.iter_lines(), strict=False)]
        assert any('"content"' in line for line in received)
        wait_for(lambda: scrape("slmops_engine_cancelled_total") == 1)
        # a non-streaming client hangs up as soon as its answer is being decoded (a timeout would race a fast
        # machine: this model decodes 1000 tokens in under half a second on 2 cores)
        body = json.dumps(long).encode()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                           b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: httpx.get(f"{url}/health").json()["active_rows"] == 1, poll_s=0.005)
        wait_for(lambda: scrape("slmops_engine_cancelled_total") == 2)
        decoded = scrape("slmops_engine_tokens_total")
        time.sleep(1.0)
        # then nothing decodes any more, both stopped far short of their budgets, and the engine is free
        assert scrape("slmops_engine_tokens_total") == decoded < 1000
        assert httpx.get(f"{url}/health").json()["active_rows"] == 0
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=3), timeout=60).status_code == 200
    finally:
        process.stop(pid)


def test_tokenizing_a_huge_prompt_does_not_block_other_requests(server: str) -> None:
    """Chat templates and tokenizers run in a thread pool: /health answers while 900 KB prompts are tokenized."""
    huge = chat_body(messages=[{"role": "user", "content": words(450_000)}])  # ~0.9 MB, under the 1 MiB limit
    durations: list[float] = []

    def send() -> None:
        start = time.perf_counter()
        r = httpx.post(f"{server}/v1/chat/completions", json=huge, timeout=120)
        durations.append(time.perf_counter() - start)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"

    senders = [threading.Thread(target=send) for _ in range(2)]
    latencies = []
    with httpx.Client(timeout=60) as http:
        http.get(f"{server}/health")
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders):
            start = time.perf_counter()
            assert http.get(f"{server}/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
    for sender in senders:
        sender.join()
    assert len(durations) == 2 and min(durations) > 0.3, "the prompts were too small to show anything"
    assert max(latencies) < min(durations) / 2, (latencies, durations)
