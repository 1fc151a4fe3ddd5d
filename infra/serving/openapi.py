"""The OpenAPI document: every status code and content type each operation can really answer with.

FastAPI writes the document from the routes; ``document`` then adds what only the running server knows (the
served model names, whether a key is required) and what applies to every operation (413 from the body limit).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from infra.serving import responses
from infra.serving.middleware import OPEN_ROUTES
from infra.serving.schemas import ChatRequest, CompletionRequest
from infra.serving.settings import ServerSettings

JSON_LINES = "application/jsonlines"
PROMETHEUS = "text/plain; version=0.0.4"


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to ``model``'s schema among the document's components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def error(description: str) -> dict[str, Any]:
    """A documented error response."""
    return {"model": responses.ErrorResponse, "description": description}


GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error("Invalid or unsupported parameter (named in error.param), or a prompt that leaves no room in "
               "the context window (code context_length_exceeded)."),
    404: error("Unknown model (code model_not_found)."),
    500: error("Generation failed in the runtime."),
    503: error("Request queue full (code queue_full); retry after Retry-After seconds."),
}


def sse_events(chunk: type[BaseModel]) -> dict[str, Any]:
    """Schema of one server-sent event of a stream of ``chunk`` objects ending with ``data: [DONE]``."""
    def json_data(model: type[BaseModel]) -> dict[str, Any]:
        return {"type": "string", "contentMediaType": "application/json", "contentSchema": ref(model)}

    data = {"anyOf": [{"const": "[DONE]"}, json_data(chunk), json_data(responses.ErrorResponse)]}
    return {"type": "object", "required": ["data"], "properties": {"data": data}}


def sse_response(whole: type[BaseModel], chunk: type[BaseModel]) -> dict[str, Any]:
    """A 200 that is JSON, or server-sent events with ``stream: true``."""
    return {"model": whole, "description": "The answer; server-sent events of chunks when stream is true.",
            "content": {"text/event-stream": {"schema": sse_events(chunk)}}}


def invocation_request() -> dict[str, Any]:
    """SageMaker's /invocations body: one chat or completion request as JSON, or many as JSON Lines."""
    one = {"oneOf": [ref(ChatRequest), ref(CompletionRequest)]}
    return {"required": True, "content": {
        "application/json": {"schema": one},
        JSON_LINES: {"schema": {"type": "string", "description": "One chat or completion request per line; each "
                                "line is answered in order, errors per line."}}}}


def invocation_responses() -> dict[int | str, dict[str, Any]]:
    """What /invocations answers."""
    whole = {"oneOf": [ref(responses.ChatCompletion), ref(responses.TextCompletion)]}
    events = {"anyOf": [sse_events(responses.ChatCompletionChunk), sse_events(responses.TextCompletion)]}
    ok = {"description": "The answer (JSON, server-sent events with stream: true, or one JSON object per line "
                         "for JSON Lines, errors included per line).",
          "content": {"application/json": {"schema": whole}, "text/event-stream": {"schema": events},
                      JSON_LINES: {"schema": {"type": "string"}}}}
    return {200: ok, **GENERATION_ERRORS}


COMPONENTS = [ChatRequest, CompletionRequest, responses.ChatCompletion, responses.ChatCompletionChunk,
              responses.TextCompletion, responses.ErrorResponse]


def document(app: FastAPI, settings: ServerSettings) -> dict[str, Any]:
    """The OpenAPI document of ``app`` serving as ``settings`` describe."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in COMPONENTS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    names = settings.served_names()
    for body in ("ChatRequest", "CompletionRequest"):
        schemas[body]["properties"]["model"] = {"anyOf": [{"enum": names}, {"type": "null"}],
                                                "description": "Served model name (see GET /v1/models)."}
    if settings.api_key is not None:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            answers.pop("422", None)  # validation errors are answered 400, as OpenAI does
            answers["413"] = _error_ref("Request body over the limit (--max-body-bytes).")
            if settings.api_key is not None and path not in OPEN_ROUTES:
                operation["security"] = [{"bearer": []}]
                answers["401"] = _error_ref("Missing or invalid API key.")
    return doc


def _error_ref(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(responses.ErrorResponse)}}}
