"""The app state every route shares: settings, engine, metrics and the tokenizer's thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from infra.serving.capture import Capture
from infra.serving.metrics import Metrics
from infra.serving.settings import ServerSettings
from infra.serving.tracing import Tracer
from tasks.engine.protocol import Done, GenerationEngine

T = TypeVar("T")


@dataclass
class ServingState:
    """Everything a route needs: settings, engine, metrics and the tokenizer's thread pool."""

    settings: ServerSettings
    engine: GenerationEngine
    metrics: Metrics = field(default_factory=Metrics)
    executor: ThreadPoolExecutor = field(init=False)
    capture: Capture = field(init=False)
    tracer: Tracer = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.settings.tokenizer_threads, thread_name_prefix="slmops-tokenize")
        self.metrics.watch(self.engine)
        self.capture = Capture(self.settings.capture, self.settings.name, self.settings.version)
        self.tracer = Tracer(self.settings.trace, self.settings.name, self.settings.version)
        self.metrics.watch_tracer(self.tracer.counts)

    def on_done(self, endpoint: str, body: Any) -> Callable[[Done], None] | None:
        """What records a request that just arrived once it finishes (data capture, MLflow trace), if sampled."""
        hooks = [h for h in (self.capture.hook(endpoint, body), self.tracer.hook(endpoint, body)) if h]
        if len(hooks) < 2:
            return hooks[0] if hooks else None

        def every(done: Done) -> None:
            for hook in hooks:
                hook(done)

        return every

    def close(self) -> None:
        """Write what was captured and traced before the process exits."""
        self.capture.close()
        self.tracer.close()

    @property
    def ready(self) -> bool:
        """False while an engine that loads in the background (``slmops serve``) is still loading."""
        return bool(getattr(self.engine, "ready", True))

    @property
    def load_error(self) -> str | None:
        """Why a background-loading engine failed to load, or None."""
        return getattr(self.engine, "load_error", None)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the tokenizer pool, keeping the event loop free."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
