"""ASGI middleware in front of every route: API key, request-body limit, metrics by route template.

Pure ASGI rather than ``BaseHTTPMiddleware``: it neither buffers responses nor hides client disconnects from
the routes (they cancel generation when their client goes away).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.serving.errors import ApiError
from infra.serving.metrics import UNMATCHED
from infra.serving.state import ServingState

OPEN_ROUTES = {"/ping", "/health", "/metrics", "/openapi.json"}
WHILE_LOADING = {"/ping", "/metrics", "/openapi.json"}  # the routes that answer before the model is loaded


class ServingMiddleware:
    """Checks the key, refuses oversized bodies with 413 and counts every request under its route template."""

    def __init__(self, app: ASGIApp, state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_template(scope)
        status = {"code": 500}

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            error = self._refuse(scope, route)
            if error is None:
                body = await _read_body(receive, self.state.settings.max_body_bytes)
                if body is None:
                    error = self._too_large()
                else:
                    await self.app(scope, _replay(body, receive), counted_send)
            if error is not None:
                await _send_error(counted_send, error)
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(route, str(status["code"])).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _refuse(self, scope: Scope, route: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.state.settings.api_key
        if key is not None and route not in OPEN_ROUTES:
            given = headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, f"Bearer {key.get_secret_value()}".encode()):
                return ApiError(401, "missing or invalid API key (Authorization: Bearer …)", "authentication_error",
                                code="invalid_api_key")
        if not self.state.ready and route not in WHILE_LOADING:
            problem = self.state.load_error
            return ApiError(500 if problem else 503, f"the model failed to load: {problem}" if problem else
                            "the model is loading; retry shortly", "server_error",
                            headers={} if problem else {"Retry-After": "1"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.state.settings.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        limit = self.state.settings.max_body_bytes
        return ApiError(413, f"request body larger than {limit} bytes (--max-body-bytes)", code="request_too_large")


def route_template(scope: Scope) -> str:
    """The path template of the route ``scope`` goes to (bounded label values), or 'unmatched'."""
    partial = None
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route.path
        if match is Match.PARTIAL and partial is None:  # right path, other method: a 405 on that route
            partial = route.path
    return partial or UNMATCHED


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (chunked bodies included)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # client gone: the route sees the disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the client to disconnect

    return replay


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items())]})
    await send({"type": "http.response.body", "body": body})
