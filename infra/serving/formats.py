"""OpenAI response shapes: chat completions, legacy text completions, their stream chunks and logprobs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from infra.serving import tools
from infra.serving.errors import ApiError
from infra.serving.generation import Generation, Result
from tasks.engine.protocol import Delta, Done, TokenLogprob


def envelope(kind: str, model: str) -> dict[str, Any]:
    """id, created and model of one response (shared by all chunks of a stream)."""
    return {"id": f"{kind}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}


def usage(done: Done) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion."""
    def entry(t: TokenLogprob) -> dict[str, Any]:
        return {"token": t.text, "logprob": t.logprob, "bytes": t.bytes}

    return {"content": [{**entry(t), "top_logprobs": [entry(a) for a in t.top]} for t in tokens], "refusal": None}


def text_logprobs(tokens: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """``choices[].logprobs`` of a legacy completion; ``offset`` is where this piece starts in the text."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.text: a.logprob for a in t.top} for t in tokens], "text_offset": offsets}


def chat_completion(model: str, result: Result, with_logprobs: bool, with_tools: bool = False) -> dict[str, Any]:
    """A whole chat completion (``with_tools``: the answer is in the tool format, infra/serving/tools.py)."""
    message, finish = (tools.message(result.done.text, result.done.finish_reason) if with_tools
                       else ({"role": "assistant", "content": result.done.text}, result.done.finish_reason))
    choice = {"index": 0, "message": message, "finish_reason": finish,
              "logprobs": chat_logprobs(result.logprobs) if with_logprobs else None}
    return {**envelope("chatcmpl", model), "object": "chat.completion", "choices": [choice],
            "usage": usage(result.done)}


def text_completion(model: str, result: Result, with_logprobs: bool) -> dict[str, Any]:
    """A whole legacy completion."""
    choice = {"index": 0, "text": result.done.text, "finish_reason": result.done.finish_reason,
              "logprobs": text_logprobs(result.logprobs) if with_logprobs else None}
    return {**envelope("cmpl", model), "object": "text_completion", "choices": [choice], "usage": usage(result.done)}


async def chat_stream(model: str, generation: Generation, with_logprobs: bool,
                      usage_chunk: bool, with_tools: bool = False) -> AsyncIterator[str]:
    """Server-sent events of a chat completion: role, content deltas, finish, optional usage, [DONE].

    ``with_tools``: the answer is in the tool format, so it is sent whole when complete — one chunk with its
    ``tool_calls`` (``index`` 0) or its content — then the finish chunk."""
    base = {**envelope("chatcmpl", model), "object": "chat.completion.chunk"}
    extra = {"usage": None} if usage_chunk else {}

    def chunk(delta: dict, finish: str | None = None, logprobs: list[TokenLogprob] | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish,
                  "logprobs": chat_logprobs(logprobs or []) if with_logprobs and logprobs else None}
        return _sse({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    async for event in _guarded(generation):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            if not with_tools:
                yield chunk({"content": event.text}, logprobs=event.logprobs)
        else:
            finish = event.finish_reason
            if with_tools:
                message, finish = tools.message(event.text, event.finish_reason)
                calls = [{"index": i, **c} for i, c in enumerate(message.get("tool_calls") or [])]
                yield chunk({"tool_calls": calls} if calls else {"content": message["content"]})
            yield chunk({}, finish)
            if usage_chunk:
                yield _sse({**base, "choices": [], "usage": usage(event)})
    yield "data: [DONE]\n\n"


async def text_stream(model: str, generation: Generation, with_logprobs: bool,
                      usage_chunk: bool) -> AsyncIterator[str]:
    """Server-sent events of a legacy completion."""
    base = {**envelope("cmpl", model), "object": "text_completion"}
    extra = {"usage": None} if usage_chunk else {}
    offset = 0
    async for event in _guarded(generation):
        if isinstance(event, str):
            yield event
        elif isinstance(event, Delta):
            logprobs = text_logprobs(event.logprobs, offset) if with_logprobs else None
            offset += len(event.text)
            yield _sse({**base, "choices": [{"index": 0, "text": event.text, "finish_reason": None,
                                             "logprobs": logprobs}], **extra})
        else:
            yield _sse({**base, "choices": [{"index": 0, "text": "", "finish_reason": event.finish_reason,
                                             "logprobs": None}], **extra})
            if usage_chunk:
                yield _sse({**base, "choices": [], "usage": usage(event)})
    yield "data: [DONE]\n\n"


async def _guarded(generation: Generation) -> AsyncIterator[Delta | Done | str]:
    """The generation's events; a failure mid-stream becomes an error event (the status line is long sent)."""
    try:
        async for event in generation.events():
            yield event
    except ApiError as exc:
        yield _sse(exc.body())


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
