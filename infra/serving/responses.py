"""Response bodies of the serving API, as declared in /openapi.json (the routes build plain dicts)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "tool_calls"]


class ErrorDetail(BaseModel):
    """What went wrong."""

    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error or server_error.")
    param: str | None = Field(description="The parameter at fault, if one is.")
    code: str | None = Field(description="Machine-readable reason, e.g. context_length_exceeded, queue_full.")


class ErrorResponse(BaseModel):
    """Every error: 400, 401, 404, 405, 413, 500, 503."""

    error: ErrorDetail


class Usage(BaseModel):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    """An alternative token."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """An output token, with the most likely alternatives at its position."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """Log-probabilities of a chat choice's tokens."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None


class CalledFunction(BaseModel):
    """The function a tool call calls, and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call of the answer."""

    id: str
    type: Literal["function"]
    function: CalledFunction


class StreamedToolCall(ToolCall):
    """A tool call in a stream chunk (sent whole, in one chunk)."""

    index: int


class AssistantMessage(BaseModel):
    """The generated turn: content, or (``finish_reason: tool_calls``) the tool it calls."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    """The one choice of a chat completion."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None


class ChatCompletion(BaseModel):
    """A chat completion (``stream: false``)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    """New content of a stream chunk."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[StreamedToolCall] | None = None


class ChunkChoice(BaseModel):
    """The choice of a stream chunk."""

    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None
    logprobs: ChatLogprobs | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; with include_usage the last has no choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextLogprobs(BaseModel):
    """Log-probabilities of a legacy completion's tokens."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    """The one choice of a legacy completion (or of a chunk, where finish_reason is null until the end)."""

    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: TextLogprobs | None


class TextCompletion(BaseModel):
    """A legacy completion, or one event of its stream (usage only in the last, with include_usage)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """The served model."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    version: str
    context_length: int


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    """GET /health."""

    status: Literal["ok"]
    model: str
    version: str
    queue_depth: int
    active_rows: int
