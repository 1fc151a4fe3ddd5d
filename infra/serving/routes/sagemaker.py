"""SageMaker's container contract: GET /ping, POST /invocations (one JSON request, or JSON Lines).

``X-Amzn-SageMaker-Custom-Attributes`` comes back on the answer (SageMaker returns it to the caller only when the
container sets it). A top-level ``id`` in a request is accepted and ignored: batch-transform rows carry one, and
SageMaker joins it back into the output row itself (``JoinSource=Input``).
"""

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
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
MAX_CUSTOM_ATTRIBUTES = 1024  # SageMaker's limit (ASCII)


@router.get("/ping", summary="Health check", response_class=Response,
            responses={200: {"description": "Ready (empty body)."},
                       503: {"description": "The model is still loading (``slmops serve``)."},
                       500: {"description": "The model failed to load; the body says why."}})
async def ping(request: Request) -> Response:
    """SageMaker's health check: 200 once the model is loaded, 503 while it loads, 500 when loading failed."""
    state = serving(request)
    if state.load_error:
        return PlainTextResponse(f"the model failed to load: {state.load_error}", status_code=500)
    return Response(status_code=200 if state.ready else 503)


@router.post("/invocations", response_model=None, summary="Invoke", responses=invocation_responses(),
             openapi_extra={"requestBody": invocation_request()})
async def invocations(request: Request) -> Response:
    """A chat (``messages``) or completion (``prompt``) request; JSON Lines answers one line per line."""
    state = serving(request)
    raw = (await request.body()).decode("utf-8", errors="replace")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in JSONL_TYPES:
        response: Response = PlainTextResponse(await _json_lines(state, raw, request), media_type=JSON_LINES)
    else:
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
        response = await respond(state, _parse(payload), request)
    attributes = request.headers.get(CUSTOM_ATTRIBUTES)
    if attributes is not None and len(attributes) <= MAX_CUSTOM_ATTRIBUTES and attributes.isascii():
        response.headers[CUSTOM_ATTRIBUTES] = attributes
    return response


def _parse(payload: Any) -> ChatRequest | CompletionRequest:
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object with 'messages' (chat) or 'prompt' (completion)")
    payload = {k: v for k, v in payload.items() if k != "id"}
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

