"""The fleet controller's HTTP API (enroll, poll, report) and its artifact server: artifacts by digest, with
``Range`` for resumed downloads and one egress cap shared by every download."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from infra.fleet.controller import Controller, FleetError
from infra.fleet.models import Desired, DeviceSpec, Heartbeat, Report

CHUNK = 16 * 1024


class Enrollment(BaseModel):
    token: str
    spec: DeviceSpec
    device_id: str | None = None


class Enrolled(BaseModel):
    device_id: str
    device_token: str


class Egress:
    """A token bucket of ``bytes_per_s`` shared by every download (None: no cap), on the controller's clock."""

    def __init__(self, bytes_per_s: float | None, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.rate, self.clock, self.sleep = bytes_per_s, clock, sleep
        self.next_free = 0.0
        self.sent = 0

    async def take(self, n: int) -> None:
        self.sent += n
        if not self.rate:
            return
        now = self.clock()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        if start > now:
            await self.sleep(start - now)


Fault = Callable[[str, str, int], tuple[str, int] | None]  # (device, digest, offset) → ("cut"|"corrupt", at)


def create_fleet_app(controller: Controller, artifacts: Path, egress: Egress | None = None,
                     fault: Fault | None = None,
                     on_download: Callable[[str, str, int, int], None] | None = None) -> FastAPI:
    """The API devices talk to. ``fault`` (the simulator's) may cut or corrupt a download; ``on_download``
    sees (device, digest, first byte, bytes sent) for every download."""
    app = FastAPI(title="slmops fleet controller", docs_url=None, redoc_url=None)
    egress = egress or Egress(None, controller.clock)

    @app.exception_handler(FleetError)
    async def _fleet_error(_: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=403 if "token" in str(exc) else 404)

    def device(authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "a device token is required (Authorization: Bearer dev_…)")
        return controller.authenticate(authorization.removeprefix("Bearer "))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/enroll")
    async def enroll(body: Enrollment) -> Enrolled:
        device_id, token = controller.enroll(body.token, body.spec, body.device_id)
        return Enrolled(device_id=device_id, device_token=token)

    @app.post("/v1/poll")
    async def poll(beat: Heartbeat, authorization: str | None = Header(None)) -> Desired:
        return controller.poll(device(authorization), beat)

    @app.post("/v1/report")
    async def report(body: Report, authorization: str | None = Header(None)) -> Desired:
        return controller.report(device(authorization), body)

    @app.get("/v1/artifacts/{sha}")
    async def artifact(sha: str, authorization: str | None = Header(None),
                       range_: str | None = Header(None, alias="Range")) -> StreamingResponse:
        device_id = device(authorization)
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not (artifacts / sha).is_file():
            raise HTTPException(404, f"no artifact {sha}")
        path = artifacts / sha
        size = path.stat().st_size
        start = 0
        if range_:
            match = re.fullmatch(r"bytes=(\d+)-", range_)
            if not match or int(match.group(1)) >= size:
                raise HTTPException(416, f"Range {range_!r}: this server resumes with bytes=N- (N < {size})")
            start = int(match.group(1))
        injected = fault(device_id, sha, start) if fault else None

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    while chunk := fh.read(CHUNK):
                        offset = start + sent
                        if injected and injected[0] == "cut" and offset + len(chunk) > injected[1]:
                            chunk = chunk[:max(0, injected[1] - offset)]
                            if chunk:
                                await egress.take(len(chunk))
                                sent += len(chunk)
                                yield chunk
                            return
                        if injected and injected[0] == "corrupt" and offset <= injected[1] < offset + len(chunk):
                            at = injected[1] - offset
                            chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1:]
                        await egress.take(len(chunk))
                        sent += len(chunk)
                        yield chunk
            finally:
                if on_download:
                    on_download(device_id, sha, start, sent)

        headers: dict[str, Any] = {"Content-Length": str(size - start), "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        return StreamingResponse(body(), status_code=206 if start else 200, headers=headers,
                                 media_type="application/octet-stream")

    return app
