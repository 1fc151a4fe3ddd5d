"""Multi-LoRA serving: one base in memory, the LoRA adapter chosen per request by ``model``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from infra import process
from tasks.data.chat import render_ids
from tasks.engine.engine import load_tokenizer
from tasks.engine.output import TokenText
from tasks.engine.static_batch import OgModel, decode_batch
from tests.infra.serving.conftest import NAME, start_server

QUESTIONS = ["Reverse: a b c", "Uppercase: d h g", "Sort the letters: e g e g i"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def lora_server(multi_lora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, pid = start_server(multi_lora["served"], tmp_path_factory.mktemp("lora") / "server.log",
                            "--max-batch-size", "8")
    yield url
    process.stop(pid)


@pytest.fixture(scope="module")
def expected(multi_lora: dict[str, Path]) -> dict[str | None, list[list[list[int]]]]:
    """Each question's greedy answer by the base and by each adapter, decoded in-process without the server, as
    the bytes of each token (an untrained model's answers are seldom whole UTF-8 text, so tokens are compared)."""
    model = OgModel(multi_lora["served"], threads=2)
    tok = load_tokenizer(multi_lora["served"])
    token_bytes = TokenText(tok).bytes
    prompts = [render_ids(tok, [{"role": "user", "content": q}], True) for q in QUESTIONS]
    return {adapter: [[token_bytes(t) for t in row.tokens]
                      for row in decode_batch(model, prompts, [MAX_TOKENS] * len(prompts), adapter=adapter)]
            for adapter in (None, "alpha", "beta")}


def ask(url: str, model: str, question: str) -> list[list[int]]:
    """The answer's tokens (as their bytes, from the logprobs) to ``question`` asked of ``model``."""
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": True,
        "messages": [{"role": "user", "content": question}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == model
    return [token["bytes"] for token in reply.json()["choices"][0]["logprobs"]["content"]]


def test_models_lists_the_base_then_its_adapters(lora_server: str) -> None:
    ids = [m["id"] for m in httpx.get(f"{lora_server}/v1/models", timeout=10).json()["data"]]
    assert ids == [NAME, "alpha", "beta"]


def test_each_request_answers_with_the_adapter_its_model_names(lora_server: str, expected: dict) -> None:
    assert len({str(answers) for answers in expected.values()}) == 3, "base, alpha and beta differ"
    for adapter in (None, "alpha", "beta"):
        assert [ask(lora_server, adapter or NAME, q) for q in QUESTIONS] == expected[adapter], adapter


def test_concurrent_requests_for_different_adapters_each_get_their_own(lora_server: str, expected: dict) -> None:
    # arriving together, they are batched by adapter: a mixed batch would answer some with the wrong weights
    jobs = [(adapter, i) for _ in range(2) for adapter in (None, "alpha", "beta") for i in range(len(QUESTIONS))]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: ask(lora_server, job[0] or NAME, QUESTIONS[job[1]]), jobs))
    assert answers == [expected[adapter][i] for adapter, i in jobs]


def test_an_unknown_model_lists_the_base_and_the_adapters(lora_server: str) -> None:
    reply = httpx.post(f"{lora_server}/v1/chat/completions", timeout=30, json={
        "model": "gamma", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == (
        f"unknown model 'gamma'; this server serves '{NAME}' and the LoRA adapters ['alpha', 'beta']")
