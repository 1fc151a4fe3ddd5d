"""The ASGI app: OpenAI-compatible chat/completions, SageMaker's /ping and /invocations, Prometheus /metrics."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from infra.serving.engine import Engine, QueueFullError, Sampling
from infra.serving.engine import Request as GenRequest
from infra.serving.schemas import ChatRequest, CompletionRequest, _Body

OPEN_PATHS = {"/ping", "/health", "/metrics"}
JSONL_TYPES = ("application/jsonlines", "application/x-jsonlines", "application/jsonl")


class ApiError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse({"error": {"message": self.message, "type": self.kind}}, self.status,
                            headers=self.headers)


class Metrics:
    """Prometheus metrics of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("slmops_requests_total", "Requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter("slmops_tokens_total", "Tokens processed", ["kind"], registry=self.registry)
        self.latency = Histogram("slmops_request_latency_seconds", "Request latency", ["endpoint"],
                                 registry=self.registry)
        self.ttft = Histogram("slmops_time_to_first_token_seconds", "Time to first token", registry=self.registry)
        self.queue_depth = Gauge("slmops_queue_depth", "Requests waiting for the engine", registry=self.registry)
        self.batch_size = Histogram("slmops_batch_size", "Requests per engine batch",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)


def create_app(engine: Engine, model_name: str, version: str = "", api_key: str | None = None,
               default_max_tokens: int = 128) -> FastAPI:
    """Build the app serving ``engine`` as ``model_name`` (version shown by /v1/models and /health)."""
    app = FastAPI(title="slmops serving runtime", docs_url=None, redoc_url=None)
    metrics = Metrics()
    engine._on_batch = metrics.batch_size.observe
    metrics.queue_depth.set_function(engine.queue.qsize)
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, _describe(exc.errors())).response()

    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        start = time.perf_counter()
        if api_key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                response = ApiError(401, "missing or invalid API key (Authorization: Bearer …)",
                                    "authentication_error").response()
                metrics.requests.labels(request.url.path, "401").inc()
                return response
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        metrics.latency.labels(request.url.path).observe(time.perf_counter() - start)
        return response

    def check_model(body: _Body) -> None:
        if body.model not in (None, model_name, f"{model_name}:{version}"):
            raise ApiError(400, f"unknown model {body.model!r}; this server serves {model_name!r}")

    def prepare(body: _Body, prompt_ids: list[int]) -> GenRequest:
        check_model(body)
        try:
            stops = body.stops()
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        max_tokens = body.max_tokens or min(default_max_tokens, max(engine.context_length - len(prompt_ids), 1))
        if body.min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens {body.min_tokens} exceeds max_tokens {max_tokens}")
        if len(prompt_ids) + max_tokens > engine.context_length:
            raise ApiError(400, f"prompt of {len(prompt_ids)} tokens plus max_tokens {max_tokens} exceeds the "
                           f"context window of {engine.context_length} tokens")
        sampling = Sampling(float(body.temperature), float(body.top_p), body.seed, body.min_tokens)
        return GenRequest(prompt_ids, max_tokens, sampling, stops, emit=lambda *_: None)

    async def run(request: GenRequest) -> AsyncIterator[tuple[str, dict]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        request.emit = lambda kind, data: loop.call_soon_threadsafe(events.put_nowait, (kind, data))
        try:
            engine.submit(request)
        except QueueFullError:
            raise ApiError(503, "server busy: request queue is full", "server_error",
                           headers={"Retry-After": "1"}) from None
        while True:
            kind, data = await events.get()
            if kind == "error":
                raise ApiError(500, data["message"], "server_error")
            yield kind, data
            if kind == "done":
                metrics.tokens.labels("prompt").inc(data["usage"]["prompt_tokens"])
                metrics.tokens.labels("completion").inc(data["usage"]["completion_tokens"])
                metrics.ttft.observe(data["ttft_s"])
                return

    async def complete(request: GenRequest) -> dict:
        async for kind, data in run(request):
            if kind == "done":
                return data
        raise ApiError(500, "generation ended without a result", "server_error")

    def envelope(kind: str) -> dict[str, Any]:
        return {"id": f"{kind[:4]}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}

    async def chat(body: ChatRequest) -> Response:
        gen = prepare(body, engine.render_chat([m.model_dump() for m in body.messages]))
        if body.stream:
            first = await _first_event(run(gen))
            base = {**envelope("chatcmpl"), "object": "chat.completion.chunk"}

            def chunk(d: dict, done: bool) -> dict:
                delta = {} if done else {"content": d["text"]}
                return {**base, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": d["finish_reason"] if done else None}]}

            opening = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
            return _sse(first, chunk, opening, base)
        data = await complete(gen)
        return JSONResponse({**envelope("chatcmpl"), "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": data["text"]},
             "finish_reason": data["finish_reason"]}], "usage": _usage(data)})

    async def completion(body: CompletionRequest) -> Response:
        gen = prepare(body, engine.encode(body.prompt))
        if body.stream:
            first = await _first_event(run(gen))
            base = {**envelope("cmpl"), "object": "text_completion"}

            def chunk_text(d: dict, done: bool) -> dict:
                return {**base, "choices": [{"index": 0, "text": "" if done else d["text"],
                                             "finish_reason": d["finish_reason"] if done else None}]}

            return _sse(first, chunk_text, None, base)
        data = await complete(gen)
        return JSONResponse({**envelope("cmpl"), "object": "text_completion", "choices": [
            {"index": 0, "text": data["text"], "finish_reason": data["finish_reason"]}], "usage": _usage(data)})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Response:
        return await chat(body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        return await completion(body)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "slmops",
                                            "version": version, "context_length": engine.context_length}]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "version": version, "queue_depth": engine.queue.qsize()}

    @app.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def invoke_one(payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise ApiError(400, "each invocation must be a JSON object with 'messages' or 'prompt'")
        payload = {**payload, "stream": False}
        try:
            if "messages" in payload:
                response = await chat(ChatRequest.model_validate(payload))
            elif "prompt" in payload:
                response = await completion(CompletionRequest.model_validate(payload))
            else:
                raise ApiError(400, "invocation needs 'messages' (chat) or 'prompt' (completion)")
        except ValidationError as exc:
            raise ApiError(400, _describe(exc.errors())) from None
        return json.loads(response.body)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", errors="replace")
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        lines = [line for line in raw.splitlines() if line.strip()]
        if ctype in JSONL_TYPES or (ctype != "application/json" and len(lines) > 1):
            answers = []
            for number, line in enumerate(lines, start=1):
                try:
                    answers.append(await invoke_one(json.loads(line)))
                except json.JSONDecodeError as exc:
                    answers.append({"error": {"message": f"line {number}: invalid JSON: {exc.msg}"}})
                except ApiError as exc:
                    answers.append({"error": {"message": f"line {number}: {exc.message}", "type": exc.kind}})
            return PlainTextResponse("".join(json.dumps(a) + "\n" for a in answers),
                                     media_type="application/jsonlines")
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
        return JSONResponse(await invoke_one(payload))

    return app


def _usage(data: dict) -> dict:
    usage = data["usage"]
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}


def _describe(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            parts.append(f"invalid JSON: {err.get('ctx', {}).get('error', err['msg'])}")
        elif not loc and err.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("the request body must be a JSON object (Content-Type: application/json)")
        else:
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts) or "invalid request"


async def _first_event(events: AsyncIterator[tuple[str, dict]]) -> tuple[tuple[str, dict], AsyncIterator]:
    """Start a stream so that queue-full and errors still answer with a status code, not a broken stream."""
    first = await events.__anext__()
    return first, events


def _sse(first: tuple, chunk, opening: dict | None, base: dict) -> StreamingResponse:
    (kind, data), rest = first

    async def body() -> AsyncIterator[str]:
        if opening is not None:
            yield f"data: {json.dumps({**base, 'choices': [opening]})}\n\n"
        event = (kind, data)
        while True:
            done = event[0] == "done"
            yield f"data: {json.dumps(chunk(event[1], done))}\n\n"
            if done:
                break
            try:
                event = await rest.__anext__()
            except StopAsyncIteration:
                break
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")
