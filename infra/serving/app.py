"""The ASGI app: OpenAI-compatible chat/completions, SageMaker's /ping and /invocations, /health, /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from infra.serving.errors import install_handlers
from infra.serving.middleware import ServingMiddleware
from infra.serving.openapi import document
from infra.serving.routes import openai as openai_routes
from infra.serving.routes import ops, sagemaker
from infra.serving.settings import ServerSettings
from infra.serving.state import ServingState
from tasks.engine.protocol import GenerationEngine


def create_app(engine: GenerationEngine, settings: ServerSettings | None = None) -> FastAPI:
    """The app serving ``engine`` as ``settings`` say (model name, version, key, limits)."""
    state = ServingState(settings or ServerSettings(), engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()  # what was captured and traced is written before the process exits

    app = FastAPI(title="slmops serving runtime", version=state.settings.version or "0", docs_url=None,
                  redoc_url=None, lifespan=lifespan)
    app.state.serving = state
    install_handlers(app)
    for router in (openai_routes.router, sagemaker.router, ops.router):
        # the routes themselves, not a nested router: the middleware resolves route templates from this list
        app.router.routes.extend(router.routes)
    app.add_middleware(ServingMiddleware, state=state)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, state.settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
