"""SageMaker's container contract: GET /ping, POST /invocations (one JSON request, or JSON Lines)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import ValidationError

from infra.serving.errors import ApiError, ClientGone, validation_error
from infra.serving.openapi import JSON_LINES, invocation_request, invocation_responses
from infra.serving.routes.openai import answer, respond, serving
from infra.serving.schemas import ChatRequest, CompletionRequest
from infra.serving.state import ServingState

router = APIRouter(tags=["sagemaker"])
JSONL_TYPES = (JSON_LINES, "application/x-jsonlines", "application/jsonl", "application/x-ndjson")


@router.get("/ping", summary="Health check", response_class=Response,
            responses={200: {"description": "Ready (empty body)."}})
async def ping() -> Response:
    """SageMaker's health check: 200 once the model is loaded."""
    return Response(status_code=200)


@router.post("/invocations", response_model=None, summary="Invoke", responses=invocation_responses(),
             openapi_extra={"requestBody": invocation_request()})
async def invocations(request: Request) -> Response:
    """A chat (``messages``) or completion (``prompt``) request; JSON Lines answers one line per line."""
    state = serving(request)
    raw = (await request.body()).decode("utf-8", errors="replace")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in JSONL_TYPES:
        return PlainTextResponse(await _json_lines(state, raw, request), media_type=JSON_LINES)
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    return await respond(state, _parse(payload), request)


def _parse(payload: Any) -> ChatRequest | CompletionRequest:
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object with 'messages' (chat) or 'prompt' (completion)")
    model = ChatRequest if "messages" in payload else CompletionRequest if "prompt" in payload else None
    if model is None:
        raise ApiError(400, "invocation needs 'messages' (chat) or 'prompt' (completion)")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def _json_lines(state: ServingState, raw: str, request: Request) -> str:
    answers = []
    for number, line in enumerate((line for line in raw.splitlines() if line.strip()), start=1):
        try:
            body = _parse(json.loads(line))
            if body.stream:
                raise ApiError(400, "stream: not supported in JSON Lines (each line is answered whole)",
                               param="stream")
            answers.append(await answer(state, body, request))
        except json.JSONDecodeError as exc:
            answers.append({"error": {"message": f"line {number}: invalid JSON: {exc.msg}",
                                      "type": "invalid_request_error", "param": None, "code": None}})
        except ClientGone:
            raise
        except ApiError as exc:
            body = exc.body()
            body["error"]["message"] = f"line {number}: {exc.message}"
            answers.append(body)
    return "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)

