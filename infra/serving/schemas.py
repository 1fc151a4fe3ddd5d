"""Request bodies of the serving API (the OpenAI subset this runtime honours) with validation messages.

Every field is either honoured, accepted as harmless metadata (``user``, ``metadata``, ``store: false``), or
accepted only at the value that asks for nothing (``n: 1``, ``frequency_penalty: 0`` …). Anything else — an
unknown field, or a feature asked for (penalties, logit bias, several choices …) — is a 400 that names the
parameter (``extra="forbid"``), never silently ignored. Structured outputs (``response_format``) and tool calls
(``tools``) are honoured: tasks/engine/structured.py and tools.py.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

from infra.serving.tools import call_text

MAX_TOP_LOGPROBS = 20


NonEmpty = Annotated[StrictStr, Field(min_length=1)]
INTEGERS = ("max_tokens", "min_tokens", "seed", "max_completion_tokens", "top_logprobs")


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or not isinstance(expected, int | float):
        return type(value) is type(expected) and value == expected
    return isinstance(value, int | float) and not isinstance(value, bool) and value == expected


def only(harmless: Any, feature: str) -> Any:
    """A parameter accepted only as ``harmless`` or null, because the runtime cannot honour ``feature``."""
    shown = json.dumps(harmless)

    def check(value: Any) -> Any:
        if value is not None and not _same(value, harmless):
            raise ValueError(f"not supported by this runtime ({feature}); only {shown} or null is accepted")
        return value

    schema = {"anyOf": [{"const": harmless}, {"type": "null"}],
              "description": f"Accepted only as {shown} or null: {feature} is not supported."}
    return Annotated[Any, AfterValidator(check), WithJsonSchema(schema)]


def _stops(value: Any) -> Any:
    stops = [value] if isinstance(value, str) else value
    if isinstance(stops, list) and (len(stops) > 4 or not all(isinstance(s, str) and s for s in stops)):
        raise ValueError("at most 4 non-empty stop sequences")
    return stops


Stop = Annotated[list[StrictStr] | None, BeforeValidator(_stops), WithJsonSchema({
    "anyOf": [{"type": "string", "minLength": 1},
              {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4}, {"type": "null"}],
    "description": "Stop sequence(s), up to 4; the text ends before the first one found."})]


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = Field(None, description="Send a last chunk with usage and no choices.")
    include_obfuscation: only(False, "obfuscation padding of stream chunks") = None


class TextPart(BaseModel):
    """A text part of a message's content."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class CalledFunction(BaseModel):
    """The function an earlier assistant turn called, and its arguments as a JSON string."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    arguments: StrictStr


class ToolCall(BaseModel):
    """One tool call of an earlier assistant turn."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr
    type: Literal["function"]
    function: CalledFunction


class Message(BaseModel):
    """One chat turn; ``developer`` is read as ``system``. An assistant turn may carry ``tool_calls`` instead of
    content; a ``tool`` turn carries a result and the ``tool_call_id`` it answers."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="assistant: the tools it called.")
    tool_call_id: StrictStr | None = Field(None, description="tool: the call this result answers.")

    @model_validator(mode="after")
    def _fields_of_the_role(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message carries tool_call_id, and only a tool message does")
        return self

    def as_template_input(self) -> dict[str, str]:
        """The turn as a chat template expects it (tool calls and results in the generic tool format)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        if self.role == "tool":
            return {"role": "user", "content": f"Result of tool call {self.tool_call_id}: {text}"}
        if self.tool_calls:
            calls = call_text([c.model_dump() for c in self.tool_calls])
            text = f"{text}\n{calls}" if text else calls
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description="Served model name (see GET /v1/models).")
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Tokens to generate at most; capped by the room the prompt leaves in the context "
        "window (finish_reason 'length').")
    min_tokens: Annotated[StrictInt, Field(ge=0)] = Field(
        0, description="Tokens to generate before end-of-sequence is allowed (extension, as in vLLM); capped "
        "by max_tokens.")
    temperature: Annotated[float, Field(ge=0, le=2, strict=True)] | None = Field(
        None, description="Sampling temperature; 0 (default) is greedy, below 1e-5 too.")
    top_p: Annotated[float, Field(gt=0, le=1, strict=True)] | None = Field(None, description="Nucleus sampling mass.")
    stop: Stop = None
    seed: StrictInt | None = Field(None, description="Seed of the sampler (reduced modulo 2**31).")
    stream: StrictBool | None = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    n: only(1, "several choices per request") = None
    frequency_penalty: only(0, "frequency penalty") = None
    presence_penalty: only(0, "presence penalty") = None
    logit_bias: only({}, "logit bias") = None
    user: StrictStr | None = Field(None, description="End-user id; accepted as metadata, not used.")
    store: only(False, "storing completions") = None

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        # JSON Schema counts 3.0 as an integer, and JSON parsers hand it over as a float
        if isinstance(data, dict):
            names = (*INTEGERS, "logprobs") if cls is CompletionRequest else INTEGERS
            return {k: int(v) if k in names and isinstance(v, float) and v.is_integer() else v for k, v in data.items()}
        return data

    def requested_max_tokens(self) -> int | None:
        """The client's max_tokens, if it sent one."""
        return self.max_tokens

    @property
    def wants_usage_chunk(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must conform to."""

    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(description="The schema's name.")
    description: StrictStr | None = Field(None, description="What the schema is for; accepted, not used.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema (an object).")
    strict: StrictBool | None = Field(None, description="Accepted; the schema is always enforced.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(BaseModel):
    """``response_format``: plain text, any JSON object, or a value of a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description="Required with type json_schema.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"type": {"const": "json_schema"}}},
        "then": {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
        "else": {"properties": {"json_schema": {"type": "null"}}}})

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema goes with type json_schema, and only with it")
        return self

    @property
    def structured(self) -> bool:
        """True unless plain text is asked for."""
        return self.type != "text"


class FunctionDef(BaseModel):
    """A function the answer may call."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments (an object).")
    strict: StrictBool | None = Field(None, description="Accepted; the arguments always follow the schema.")


class Tool(BaseModel):
    """``tools[]``: a function tool."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    """The function ``tool_choice`` names."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the function the answer must call."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(_Body):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="Alias of max_tokens.")
    logprobs: StrictBool | None = Field(None, description="Return the log-probability of each output token.")
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = Field(None,
                                           description="Most likely alternatives per token (needs logprobs).")
    metadata: dict[str, Annotated[StrictStr, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="Key-value metadata; accepted, not used.")
    tools: list[Tool] | None = Field(None, max_length=128, description="Functions the answer may call (the "
                                     "generic tool format of infra/serving/tools.py).")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="auto (default with tools): call a tool or answer; required: call one; a named function: "
        "call it; none: answer in text.")
    parallel_tool_calls: StrictBool | None = Field(None, description="Accepted; an answer calls at most one tool.")
    response_format: ResponseFormat | None = Field(
        None, description="text (default); json_object: any JSON object; json_schema: a value that conforms to "
                          "json_schema.schema (enforced token by token).")
    modalities: only(["text"], "audio output") = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}})

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                             f"({self.max_completion_tokens}) differ; send one of them")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: function names repeat ({', '.join(names)})")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not among tools "
                             f"({', '.join(names) or 'none'})")
        if self.tool_choice not in (None, "none") and not names:
            raise ValueError("tool_choice asks for a tool call, but tools is empty")
        if names and self.tool_choice != "none" and self.response_format and self.response_format.structured:
            raise ValueError("response_format with tools is not supported; send one of them")
        return self

    def requested_max_tokens(self) -> int | None:
        """The client's max_tokens or max_completion_tokens, if it sent one."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def top_logprobs_k(self) -> int | None:
        """None without logprobs, else how many alternatives each token carries."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Body):
    """POST /v1/completions (legacy plain-prompt completions)."""

    prompt: Annotated[StrictStr, Field(min_length=1)] | Annotated[list[NonEmpty], Field(min_length=1, max_length=1)] = (
        Field(description="The prompt, or a list holding one prompt (as LangChain sends it)."))
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = Field(
        None, description="Return log-probabilities of each token and of this many most likely alternatives.")
    echo: only(False, "echoing the prompt") = None
    best_of: only(1, "best-of sampling") = None

    def top_logprobs_k(self) -> int | None:
        """None without logprobs, else how many alternatives each token carries."""
        return self.logprobs

    @property
    def text(self) -> str:
        """The prompt text."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
