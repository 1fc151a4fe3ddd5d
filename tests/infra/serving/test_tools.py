"""Tool calls in the generic tool format (infra/serving/tools.py), enforced by the structured-output grammar, through
the OpenAI client and LangChain's ``bind_tools``, on a real server process over an untrained model with a 1024-token
window (the format is what is tested; which tool a model picks is the model's business)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from infra import process
from infra.serving import tools
from infra.serving.schemas import ChatRequest
from tests.infra.serving.conftest import NAME, start_server

USER = [{"role": "user", "content": "Reverse: a b c"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                       "required": ["zone"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def wide_server(slow_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An untrained model with a 1024-token window: room for the tool list (the trained teacher has 128)."""
    url, pid = start_server(slow_onnx, tmp_path_factory.mktemp("tools") / "server.log")
    yield url
    process.stop(pid)


@pytest.fixture(scope="module")
def client(wide_server: str) -> OpenAI:
    return OpenAI(base_url=f"{wide_server}/v1", api_key="unused", max_retries=0)


def test_required_gives_a_call_of_a_listed_tool_with_schema_arguments(client: OpenAI) -> None:
    reply = client.chat.completions.create(model=NAME, messages=USER, tools=[WEATHER, CLOCK], tool_choice="required",
                                           max_tokens=200, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, sorted(arguments)) in [("get_weather", ["city"]), ("get_time", ["zone"])]


def test_a_named_tool_is_the_one_called_and_streams_whole(client: OpenAI) -> None:
    body = dict(model=NAME, messages=USER, tools=[WEATHER, CLOCK], max_tokens=200, temperature=0,
                tool_choice={"type": "function", "function": {"name": "get_time"}})
    whole = client.chat.completions.create(**body).choices[0]
    assert whole.message.tool_calls[0].function.name == "get_time"
    assert json.loads(whole.message.tool_calls[0].function.arguments)["zone"] in ("UTC", "CET")
    chunks = list(client.chat.completions.create(**body, stream=True))
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name, c.function.arguments) for c in calls] == \
        [(0, "get_time", whole.message.tool_calls[0].function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_answers_or_calls_and_a_tool_result_continues_the_conversation(client: OpenAI) -> None:
    for seed in range(3):
        choice = client.chat.completions.create(model=NAME, messages=USER, tools=[WEATHER], max_tokens=200,
                                                temperature=1.0, seed=seed).choices[0]
        assert (choice.finish_reason, choice.message.tool_calls is None) in {
            ("tool_calls", False), ("stop", True), ("length", True)}
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    reply = client.chat.completions.create(model=NAME, messages=history, tools=[WEATHER], tool_choice="none",
                                           max_tokens=4)
    assert reply.choices[0].message.content is not None and reply.choices[0].finish_reason in ("stop", "length")


def test_malformed_tool_turns_are_400s(client: OpenAI) -> None:
    for messages, named in (([{"role": "tool", "content": "x"}], "tool message carries tool_call_id"),
                            ([{"role": "user", "content": "x", "tool_call_id": "c"}], "only a tool message does"),
                            ([{"role": "user"}], "a user message needs content")):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)
        assert named in info.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="response_format with tools"):
        client.chat.completions.create(model=NAME, messages=USER, tools=[WEATHER], max_tokens=2,
                                       response_format={"type": "json_object"})


def test_langchain_bind_tools_and_function_calling_structured_output(wide_server: str) -> None:
    from langchain_openai import ChatOpenAI

    class Weather(BaseModel):
        """The weather in a city."""

        city: str = Field(max_length=12)

    chat = ChatOpenAI(base_url=f"{wide_server}/v1", api_key="unused", model=NAME, max_tokens=200, temperature=0,
                      max_retries=0)
    message = chat.bind_tools([Weather], tool_choice="Weather").invoke("Reverse: a b c")
    assert [c["name"] for c in message.tool_calls] == ["Weather"] and "city" in message.tool_calls[0]["args"]
    assert isinstance(chat.with_structured_output(Weather, method="function_calling").invoke("a b c"), Weather)


def test_the_format_renders_and_reads_back() -> None:
    body = ChatRequest.model_validate({"messages": USER, "tools": [WEATHER], "tool_choice": "required"})
    turns = tools.template_messages([{"role": "system", "content": "Be brief."}], body, tools.mode(body))
    assert turns[0]["content"].startswith("Be brief.\n\nYou can use these tools:") and "get_weather" in \
        turns[0]["content"]
    message, finish = tools.message('{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}', "stop")
    assert finish == "tool_calls" and json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert tools.message('{"response": "hi"}', "stop") == ({"role": "assistant", "content": "hi"}, "stop")
    assert tools.message('{"tool_ca', "length") == ({"role": "assistant", "content": '{"tool_ca'}, "length")
    assert tools.mode(ChatRequest.model_validate({"messages": USER, "tools": [WEATHER], "tool_choice": "none"})) is None
