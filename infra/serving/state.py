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
from tasks.engine.protocol import GenerationEngine

T = TypeVar("T")


@dataclass
class ServingState:
    """Everything a route needs: settings, engine, metrics and the tokenizer's thread pool."""

    settings: ServerSettings
    engine: GenerationEngine
    metrics: Metrics = field(default_factory=Metrics)
    executor: ThreadPoolExecutor = field(init=False)
    capture: Capture = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.settings.tokenizer_threads, thread_name_prefix="slmops-tokenize")
        self.metrics.watch(self.engine)
        self.capture = Capture(self.settings.capture, self.settings.name, self.settings.version)

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
