"""The serving runtime as a real process, as clients use it: the OpenAI SDK, LangChain, SageMaker, plain HTTP."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from infra import process
from tests.infra.serving.conftest import NAME, chat_body, start_server

USER = [{"role": "user", "content": "Reverse: a b c"}]


@pytest.fixture(scope="module")
def client(server: str) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_openai_client_chat_streaming_and_not(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    reply = client.chat.completions.create(model=NAME, messages=USER, max_tokens=6, temperature=0)
    text = reply.choices[0].message.content
    assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=NAME, messages=USER, max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: same answer both ways
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    completion = client.completions.create(model=NAME, prompt="a b c", max_tokens=4)
    assert completion.usage.completion_tokens <= 4


def test_stream_usage_chunk_and_max_completion_tokens(client: OpenAI) -> None:
    stream = client.chat.completions.create(model=NAME, messages=USER, max_completion_tokens=3,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"min_tokens": 3})
    chunks = list(stream)
    # as OpenAI: every chunk carries usage null but the last, which has usage and no choices
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason == "length"
    legacy = list(client.completions.create(model=NAME, prompt="a b c", max_tokens=2, stream=True,
                                            stream_options={"include_usage": True}))
    assert legacy[-1].choices == [] and legacy[-1].usage.completion_tokens <= 2
    with pytest.raises(openai.BadRequestError, match="max_tokens .3. and max_completion_tokens .4. differ"):
        client.chat.completions.create(model=NAME, messages=USER, max_tokens=3, max_completion_tokens=4)


def test_the_seed_decides_a_sample_and_temperature_is_honoured(client: OpenAI) -> None:
    def sample(seed: int | None, temperature: float) -> str:
        reply = client.chat.completions.create(model=NAME, messages=USER, max_tokens=12, temperature=temperature,
                                               seed=seed, extra_body={"min_tokens": 12})
        return reply.choices[0].message.content

    greedy = sample(None, 0.0)
    # the same seed draws the same sample; different seeds draw different ones
    assert sample(7, 1.5) == sample(7, 1.5)
    draws = {seed: sample(seed, 1.5) for seed in range(1, 7)}
    assert len(set(draws.values())) > 1, "the seed must matter"
    # sampling at a high temperature leaves the greedy answer; temperature 0 is greedy whatever the seed
    assert any(text != greedy for text in draws.values())
    assert sample(5, 0.0) == greedy


def test_stop_as_string_or_list(client: OpenAI) -> None:
    full = client.chat.completions.create(model=NAME, messages=USER, max_tokens=8, extra_body={"min_tokens": 8})
    text = full.choices[0].message.content
    assert len(text) > 2
    for stop in (text[1:3], [text[1:3], "never"]):
        cut = client.chat.completions.create(model=NAME, messages=USER, max_tokens=8, stop=stop,
                                             extra_body={"min_tokens": 8})
        assert cut.choices[0].message.content == text[:1] and cut.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(model=NAME, messages=USER, max_tokens=8, stop=stop, stream=True,
                                                  extra_body={"min_tokens": 8})
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[:1]  # no stop prefix leaks


def test_logprobs_in_openai_shape(client: OpenAI) -> None:
    reply = client.chat.completions.create(model=NAME, messages=USER, max_tokens=4, logprobs=True, top_logprobs=3,
                                           extra_body={"min_tokens": 4})
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 4
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and bytes(token.bytes).decode() == token.token and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == token.logprob
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
    streamed = client.chat.completions.create(model=NAME, messages=USER, max_tokens=4, logprobs=True, stream=True,
                                              extra_body={"min_tokens": 4})
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [t.token for t in content]
    legacy = client.completions.create(model=NAME, prompt="a b c", max_tokens=3, logprobs=2,
                                       extra_body={"min_tokens": 3})
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3 and lp.text_offset[0] == 0
    assert all(len(alternatives) == 2 for alternatives in lp.top_logprobs)
    assert all(math.isfinite(v) and v <= 0 for v in lp.token_logprobs)


@pytest.mark.parametrize(("params", "named"), [
    ({"n": 2}, "n: not supported by this runtime (several choices per request)"),
    ({"tool_choice": "auto"}, "tool_choice asks for a tool call, but tools is empty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function",
                                                                                 "function": {"name": "g"}}},
     "tool_choice names 'g', which is not among tools (f)"),
    ({"response_format": {"type": "json_schema"}}, "json_schema goes with type json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"frequency_penalty": 0.5}, "frequency_penalty: not supported"),
    ({"presence_penalty": -1}, "presence_penalty: not supported"),
    ({"logit_bias": {"12": 5}}, "logit_bias: not supported"),
    ({"functions": [{"name": "f"}]}, "functions: not supported"),
    ({"modalities": ["text", "audio"]}, "modalities: not supported"),
    ({"store": True}, "store: not supported"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"top_k": 5}, "top_k: unsupported parameter"),
])
def test_what_the_runtime_cannot_honour_is_a_400_naming_it(client: OpenAI, params: dict, named: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=USER, max_tokens=2, extra_body=params)
    assert named in info.value.body["message"]


def test_harmless_metadata_and_neutral_values_are_accepted(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=NAME, messages=[{"role": "developer", "content": "Be brief."}, *USER], max_tokens=2, user="u-1",
        metadata={"team": "a"}, store=False, n=1, frequency_penalty=0, presence_penalty=0.0, logit_bias={},
        response_format={"type": "text"}, tool_choice="none", tools=[], modalities=["text"])
    assert reply.choices[0].message.content is not None


def test_langchain_clients(server: str) -> None:
    from langchain_openai import ChatOpenAI
    from langchain_openai import OpenAI as LangChainOpenAI

    chat = ChatOpenAI(base_url=f"{server}/v1", api_key="unused", model=NAME, max_tokens=6, temperature=0,
                      max_retries=0, stream_usage=True)
    reply = chat.invoke("Reverse: a b c")
    assert reply.usage_metadata["output_tokens"] >= 1 and reply.response_metadata["finish_reason"] in ("stop",
                                                                                                       "length")
    chunks = list(chat.stream("Reverse: a b c"))
    assert "".join(c.content for c in chunks) == reply.content
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == reply.usage_metadata[
        "output_tokens"]
    assert ChatOpenAI(base_url=f"{server}/v1", api_key="unused", model=NAME, max_retries=0).invoke("hi").content \
        is not None  # LangChain's defaults, no parameter set
    legacy = LangChainOpenAI(base_url=f"{server}/v1", api_key="unused", model=NAME, max_tokens=4, max_retries=0)
    assert isinstance(legacy.invoke("a b c"), str)  # LangChain sends the prompt as a one-item list


def test_sagemaker_ping_and_invocations(server: str) -> None:
    assert httpx.get(f"{server}/ping").status_code == 200
    one = httpx.post(f"{server}/invocations", json=chat_body())
    assert one.status_code == 200 and one.json()["object"] == "chat.completion"
    lines = [chat_body(max_tokens=2), {"prompt": "a b", "max_tokens": 3}, {"nonsense": 1}, chat_body(max_tokens=1),
             chat_body(stream=True)]
    body = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    many = httpx.post(f"{server}/invocations", content=body, headers={"Content-Type": "application/jsonlines"})
    answers = [json.loads(line) for line in many.text.splitlines()]
    assert [a.get("object") for a in answers] == ["chat.completion", "text_completion", None, "chat.completion",
                                                  None, None]
    assert answers[0]["usage"]["completion_tokens"] <= 2 and answers[3]["usage"]["completion_tokens"] <= 1
    assert "line 3: invocation needs 'messages'" in answers[2]["error"]["message"]
    assert "line 5: stream: not supported in JSON Lines" in answers[4]["error"]["message"]
    assert "line 6: invalid JSON" in answers[5]["error"]["message"]
    streamed = httpx.post(f"{server}/invocations", json=chat_body(stream=True))
    assert streamed.headers["content-type"].startswith("text/event-stream") and "data: [DONE]" in streamed.text


@pytest.mark.parametrize(("body", "status", "expected"), [
    ("{not json", 400, "invalid JSON"),
    ([1, 2], 400, "must be a JSON object"),
    ({"messages": []}, 400, "messages: List should have at least 1 item"),
    ({"max_tokens": 4}, 400, "messages: Field required"),
    (chat_body(model="gpt-4"), 404, "unknown model 'gpt-4'; this server serves 'tiny-slm'"),
    (chat_body(max_tokens=-1), 400, "max_tokens: Input should be greater than or equal to 1"),
    (chat_body(max_tokens="ten"), 400, "max_tokens: Input should be a valid integer"),
    (chat_body(temperature=3), 400, "temperature: Input should be less than or equal to 2"),
    (chat_body(top_p=0), 400, "top_p: Input should be greater than 0"),
    (chat_body(messages=[{"role": "robot", "content": "x"}]), 400, "messages.0.role: Input should be 'system'"),
    (chat_body(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content: Input should be a valid string"),
    (chat_body(messages=[{"role": "user", "content": "x", "name": "bob"}]), 400,
     "messages.0.name: not supported by this runtime (participant names)"),
    (chat_body(stream="yes"), 400, "stream: Input should be a valid boolean"),
    (chat_body(stop=["a", "b", "c", "d", "e"]), 400, "stop: at most 4 non-empty stop sequences"),
    (chat_body(messages=[{"role": "user", "content": "a " * 400}]), 400,
     "leaves no room in the context window of 128 tokens"),
])
def test_bad_payloads_get_an_error_that_says_why(server: str, body, status: int, expected: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{server}/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert expected in r.json()["error"]["message"]


def test_max_tokens_beyond_the_window_is_capped_like_openai_servers(server: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=chat_body(max_tokens=100_000, min_tokens=100_000))
    usage = r.json()["usage"]
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 128


def test_body_limit_413_by_length_and_by_chunks(server: str) -> None:
    big = json.dumps(chat_body(messages=[{"role": "user", "content": "a" * (2 << 20)}])).encode()
    declared = httpx.post(f"{server}/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "larger than 1048576 bytes" in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: Transfer-Encoding chunked
        for i in range(0, len(big), 64 << 10):
            yield big[i:i + (64 << 10)]

    streamed = httpx.post(f"{server}/invocations", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"
    assert httpx.post(f"{server}/v1/chat/completions", json=chat_body()).status_code == 200


def test_metric_labels_are_route_templates(server: str) -> None:
    def endpoints() -> set[str]:
        text = httpx.get(f"{server}/metrics").text
        return {line.split('endpoint="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("slmops_requests_total{")}

    for i in range(100):
        httpx.get(f"{server}/random/{os.urandom(6).hex()}?i={i}")
        httpx.post(f"{server}/v1/{os.urandom(4).hex()}", json={})
    labels = endpoints()
    assert labels <= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/invocations", "/ping", "/health",
                      "/metrics", "/openapi.json", "unmatched"}
    assert "unmatched" in labels
    assert 'endpoint="unmatched",status="404"' in httpx.get(f"{server}/metrics").text


def test_api_key(tiny_onnx: Path, tmp_path: Path) -> None:
    url, pid = start_server(tiny_onnx, tmp_path / "s.log", api_key="s3cret")
    try:
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body()).status_code == 401
        bad = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "API key" in bad.json()["error"]["message"]
        client = OpenAI(base_url=f"{url}/v1", api_key="s3cret")
        assert client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}],
                                              max_tokens=2).choices
        for open_route in ("/ping", "/health", "/metrics", "/openapi.json"):  # health checks carry no key
            assert httpx.get(f"{url}{open_route}").status_code == 200
        assert "s3cret" not in (tmp_path / "s.log").read_text()
    finally:
        process.stop(pid)
    assert not process.alive(pid)
    assert os.environ.get("SLMOPS_TEST_KEY") is None
