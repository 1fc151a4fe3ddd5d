"""OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from infra.serving import formats, tools
from infra.serving.generation import EventStream, Generation, Result, prepare
from infra.serving.openapi import GENERATION_ERRORS, sse_response
from infra.serving.responses import ChatCompletion, ChatCompletionChunk, ModelList, TextCompletion
from infra.serving.schemas import ChatRequest, CompletionRequest
from infra.serving.state import ServingState

router = APIRouter(tags=["openai"])


def serving(request: Request) -> ServingState:
    """The app state of the server handling ``request``."""
    return request.app.state.serving


async def respond(state: ServingState, body: ChatRequest | CompletionRequest, request: Request) -> Response:
    """Answer a chat or completion request: server-sent events when it asks for a stream, else JSON."""
    on_done = state.on_done(request.url.path, body)
    generation = Generation(state, await prepare(state, body), on_done)
    if not body.stream:
        return JSONResponse(_whole(state, body, generation, await generation.collect(request.receive)))
    name, usage_chunk = _answered_by(state, generation), body.wants_usage_chunk
    if isinstance(body, ChatRequest):
        stream = formats.chat_stream(name, generation, bool(body.logprobs), usage_chunk, tools.mode(body) is not None)
    else:
        stream = formats.text_stream(name, generation, body.logprobs is not None, usage_chunk)
    return EventStream(stream, generation)


async def answer(state: ServingState, body: ChatRequest | CompletionRequest, request: Request) -> dict:
    """The whole answer to a request as JSON (callers refuse stream: true before)."""
    on_done = state.on_done(request.url.path, body)
    generation = Generation(state, await prepare(state, body), on_done)
    return _whole(state, body, generation, await generation.collect(request.receive))


def _answered_by(state: ServingState, generation: Generation) -> str:
    """The ``model`` an answer names: the LoRA adapter that answered it, else the served model."""
    return generation.request.adapter or state.settings.name


def _whole(state: ServingState, body: ChatRequest | CompletionRequest, generation: Generation, result: Result) -> dict:
    name = _answered_by(state, generation)
    if isinstance(body, ChatRequest):
        return formats.chat_completion(name, result, bool(body.logprobs), tools.mode(body) is not None)
    return formats.text_completion(name, result, body.logprobs is not None)


@router.post("/v1/chat/completions", response_model=None, summary="Chat completion",
             responses={200: sse_response(ChatCompletion, ChatCompletionChunk), **GENERATION_ERRORS})
async def chat_completions(body: ChatRequest, request: Request) -> Response:
    """Generate the assistant's answer to a conversation (rendered with the model's chat template)."""
    return await respond(serving(request), body, request)


@router.post("/v1/completions", response_model=None, summary="Text completion",
             responses={200: sse_response(TextCompletion, TextCompletion), **GENERATION_ERRORS})
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Continue a plain prompt."""
    return await respond(serving(request), body, request)


@router.get("/v1/models", response_model=ModelList, summary="Served models")
async def models(request: Request) -> dict:
    """The model this server serves, with its version and context window, then each LoRA adapter it serves
    beside it (send its id as ``model`` to answer with that adapter)."""
    state = serving(request)
    card = {"object": "model", "owned_by": "slmops", "created": 0, "version": state.settings.version,
            "context_length": state.engine.context_length}
    names = [state.settings.name, *(a for a in state.engine.adapters if a != state.settings.name)]
    return {"object": "list", "data": [{"id": name, **card} for name in names]}
