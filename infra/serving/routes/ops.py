"""Operations routes: GET /health and Prometheus GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import generate_latest

from infra.serving.openapi import PROMETHEUS
from infra.serving.responses import Health
from infra.serving.routes.openai import serving

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Status")
async def health(request: Request) -> dict:
    """The served model and version, and how busy the engine is."""
    state = serving(request)
    return {"status": "ok", "model": state.settings.name, "version": state.settings.version,
            "queue_depth": state.engine.queue_depth(), "active_rows": state.engine.stats.active}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format.",
                             "content": {PROMETHEUS: {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    """Requests by route template and status, tokens, latency, time to first token, queue, batches, engine."""
    return Response(generate_latest(serving(request).metrics.registry), media_type=PROMETHEUS)
