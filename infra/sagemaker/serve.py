"""``slmops serve``: the serving runtime as SageMaker starts a container (``docker run IMAGE serve``).

The socket opens at once; the model loads in a background thread meanwhile, with ``/ping`` answering 503 until it
is ready (200 after, 500 with the reason if loading failed), because SageMaker wants ``/ping`` answered within
2 s of the socket accepting. SIGTERM stops accepting connections and lets in-flight requests finish (uvicorn's
graceful shutdown) before SageMaker's SIGKILL 30 s later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tasks.engine.protocol import EngineStats, GenerationRequest

log = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_PORT = 8080
DRAIN_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
NAME_ENV, VERSION_ENV = "SLMOPS_SERVED_NAME", "SLMOPS_SERVED_VERSION"  # set by the sagemaker target's create_model


class LoadingEngine:
    """A ``GenerationEngine`` whose model loads in a background thread; ``ready`` turns True when it has."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._engine = load, None
        self._stats = EngineStats()
        self.on_batch: Callable[[int], None] | None = None
        self.load_error: str | None = None
        self.loaded_in_s: float | None = None

    def start(self) -> None:
        """Begin loading (returns at once)."""
        threading.Thread(target=self._run, name="slmops-load", daemon=True).start()

    def _run(self) -> None:
        import time

        started = time.perf_counter()
        try:
            engine = self._load()
        except Exception as exc:  # reported by /ping (500) and the log; SageMaker then fails the endpoint
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("the model failed to load: %s", self.load_error)
            return
        engine.on_batch = self.on_batch
        self.loaded_in_s = round(time.perf_counter() - started, 3)
        self._engine = engine
        log.warning("model loaded in %.2fs", self.loaded_in_s)

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""
        return self._engine is not None

    def _loaded(self) -> Any:
        if self._engine is None:  # the middleware answers 503 before a route gets here
            raise RuntimeError("the model is not loaded yet")
        return self._engine

    @property
    def stats(self) -> EngineStats:
        return self._stats if self._engine is None else self._engine.stats

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    @property
    def tokenizer(self) -> Any:
        return self._loaded().tokenizer

    @property
    def adapters(self) -> list[str]:
        return self._loaded().adapters

    @property
    def constraints(self) -> Any:
        return self._loaded().constraints

    def submit(self, request: GenerationRequest) -> None:
        self._loaded().submit(request)

    def cancel(self, request: GenerationRequest) -> None:
        self._loaded().cancel(request)

    def queue_depth(self) -> int:
        return 0 if self._engine is None else self._engine.queue_depth()


def bind_port() -> int:
    """``SAGEMAKER_BIND_TO_PORT`` when SageMaker sets it (the image carries the accept-bind-to-port label), else
    8080."""
    return int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before anything heavy is imported: connections made meanwhile wait in the
    kernel's backlog and are answered as soon as the server runs."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(model_dir: str | Path = DEFAULT_MODEL_DIR, host: str = "0.0.0.0", port: int | None = None) -> None:
    """Serve the onnxruntime-genai folder ``model_dir`` until SIGTERM (or Ctrl-C), loading it in the background."""
    sock = listen(host, port or bind_port())
    import uvicorn
    from fastapi import FastAPI

    from infra.serving.app import create_app
    from infra.serving.settings import ServerSettings
    from infra.serving.tracing import trace_from_env

    def load():
        from tasks.engine.engine import Engine
        from tasks.engine.settings import engine_from_env

        return Engine(model_dir, engine_from_env(os.environ))  # the target's engine settings (SLMOPS_ENGINE_*)

    engine = LoadingEngine(load)
    settings = ServerSettings(name=os.environ.get(NAME_ENV) or "model", version=os.environ.get(VERSION_ENV, ""),
                              trace=trace_from_env(os.environ))  # off unless the endpoint sets SLMOPS_TRACE_SAMPLE
    app = create_app(engine, settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=DRAIN_S))
    inner = app.router.lifespan_context

    async def load_once_listening() -> None:
        # loading imports transformers and onnxruntime-genai, holding the GIL for seconds: only after the bind
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.005)
        engine.start()

    @asynccontextmanager
    async def lifespan(fastapi_app: FastAPI):
        waiter = asyncio.create_task(load_once_listening())
        async with inner(fastapi_app) as state:
            yield state
        waiter.cancel()

    app.router.lifespan_context = lifespan
    server.run(sockets=[sock])
