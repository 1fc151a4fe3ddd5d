"""Stable-port reverse proxy for blue/green swaps of the local target.

Clients talk to the proxy's stable port; the deployer points it at a new backend with an authenticated
admin call and waits until the old backend has no request in flight before stopping it, so a client calling
continuously during a swap sees no failed request.

``python -m infra.serving.proxy --port N --upstream URL`` (admin token from ``SLMOPS_PROXY_TOKEN``).
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

ADMIN = "/_slmops/upstream"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
               "content-length"}


def create_proxy(upstream: str, token: str) -> FastAPI:
    """The proxy app; ``PUT /_slmops/upstream`` with ``X-Slmops-Token`` switches the backend."""
    app = FastAPI(docs_url=None, redoc_url=None)
    state = {"upstream": upstream.rstrip("/")}
    inflight: Counter[str] = Counter()
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=5.0),
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def done(target: str) -> None:
        inflight[target] -= 1
        if inflight[target] <= 0:  # retired backends do not pile up in the admin answer
            del inflight[target]

    def authorised(request: Request) -> bool:
        return secrets.compare_digest(request.headers.get("x-slmops-token", "").encode(), token.encode())

    @app.get(ADMIN)
    async def show(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "forbidden"}, 403)
        return JSONResponse({"upstream": state["upstream"], "inflight": dict(inflight)})

    @app.put(ADMIN)
    async def switch(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "forbidden"}, 403)
        try:
            upstream = (await request.json())["upstream"]
            if not isinstance(upstream, str) or not upstream.startswith(("http://", "https://")):
                raise ValueError(upstream)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"upstream": "http://host:port"}'}, 400)
        state["upstream"] = upstream.rstrip("/")
        return JSONResponse({"upstream": state["upstream"]})

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
    async def forward(path: str, request: Request) -> Response:
        target = state["upstream"]  # read once: a swap mid-request keeps this request on its backend
        inflight[target] += 1
        try:
            upstream_request = client.build_request(
                request.method, f"{target}/{path}", params=request.query_params, content=await request.body(),
                headers=[(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS])
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            done(target)
            return JSONResponse({"error": {"message": f"upstream unavailable: {exc}", "type": "server_error"}},
                                502, headers={"Retry-After": "1"})

        async def body() -> AsyncIterator[bytes]:
            try:
                async for piece in upstream.aiter_raw():
                    yield piece
            finally:
                await upstream.aclose()
                done(target)

        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(body(), status_code=upstream.status_code, headers=headers)

    return app


def main(argv: list[str] | None = None) -> None:
    """Run the proxy until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m infra.serving.proxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Backend base URL, e.g. http://127.0.0.1:9001")
    args = parser.parse_args(argv)
    token = os.environ.get("SLMOPS_PROXY_TOKEN")
    if not token:
        parser.error("SLMOPS_PROXY_TOKEN must be set")
    uvicorn.run(create_proxy(args.upstream, token), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
