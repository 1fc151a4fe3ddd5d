"""Structured outputs (tasks/engine/structured.py): ``response_format`` json_schema and json_object enforced
token by token, through the OpenAI client's ``parse`` and LangChain's ``with_structured_output`` (whose default
method is json_schema), on a real server process over the trained tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from infra import process
from tests.infra.serving.conftest import NAME, start_server

USER = [{"role": "user", "content": "Reverse: a b c"}]


class Answer(BaseModel):
    answer: str = Field(max_length=6)
    confident: bool


@pytest.fixture(scope="module")
def client(server: str) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_openai_parse_returns_the_schema_s_object(client: OpenAI) -> None:
    reply = client.chat.completions.parse(model=NAME, messages=USER, response_format=Answer, max_tokens=48,
                                          temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", "the grammar ends the answer once the object is complete"
    assert isinstance(choice.message.parsed, Answer)
    assert json.loads(choice.message.content) == choice.message.parsed.model_dump()


def test_json_object_gives_an_object_even_when_sampling(client: OpenAI) -> None:
    for seed in range(3):
        reply = client.chat.completions.create(model=NAME, messages=USER, response_format={"type": "json_object"},
                                               max_tokens=64, temperature=1.0, seed=seed)
        if reply.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(reply.choices[0].message.content), dict)
        else:  # cut short by max_tokens: a prefix of an object, as OpenAI's API gives
            assert reply.choices[0].message.content.startswith("{")


def test_a_streamed_structured_answer_is_the_same(client: OpenAI) -> None:
    body = dict(model=NAME, messages=USER, max_tokens=48, temperature=0,
                response_format={"type": "json_schema", "json_schema": {"name": "answer",
                                                                        "schema": Answer.model_json_schema()}})
    whole = client.chat.completions.create(**body).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True))
    assert streamed == whole and Answer.model_validate_json(whole)


def test_langchain_with_structured_output(server: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server}/v1", api_key="unused", model=NAME, max_tokens=48, temperature=0,
                      max_retries=0)
    assert isinstance(chat.with_structured_output(Answer).invoke("Reverse: a b c"), Answer)


def test_a_schema_the_compiler_refuses_is_a_400_naming_it(client: OpenAI) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=USER, max_tokens=4, response_format=bad)
    assert "strin" in info.value.body["message"] and info.value.body["param"] == "response_format"


def test_the_batches_scheduler_refuses_structured_output(tiny_onnx: Path, tmp_path: Path) -> None:
    url, pid = start_server(tiny_onnx, tmp_path / "s.log", "--scheduler", "batches")
    try:
        with pytest.raises(openai.BadRequestError, match="continuous scheduler"):
            OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).chat.completions.create(
                model=NAME, messages=USER, max_tokens=4, response_format={"type": "json_object"})
    finally:
        process.stop(pid)
