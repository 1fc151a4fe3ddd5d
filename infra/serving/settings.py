"""Settings of one serving process: what it serves as and how it guards itself (the engine's own settings are
``tasks/engine/settings.EngineConfig``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from infra.serving.capture import CaptureConfig
from infra.serving.tracing import TraceConfig


class ServerSettings(BaseModel, extra="forbid"):
    """The HTTP side of the serving runtime."""

    name: str = Field("model", min_length=1, description="Model name clients send as 'model'.")
    version: str = Field("", description="Version label shown by /v1/models and /health.")
    api_key: SecretStr | None = Field(None, description="Bearer key required on every route but /ping, /health, "
                                      "/metrics and /openapi.json; None means no key.")
    default_max_tokens: int = Field(128, gt=0, description="max_tokens of a request that sends none (capped by "
                                    "the room left in the context window).")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Larger request bodies get 413.")
    tokenizer_threads: int = Field(2, gt=0, description="Threads that render chat templates and tokenize, off "
                                   "the event loop.")
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="Data capture of request and "
                                   "response bodies (off by default).")
    trace: TraceConfig = Field(default_factory=TraceConfig, description="Served requests as MLflow traces (off "
                               "by default).")

    def served_names(self) -> list[str]:
        """Values of 'model' this server answers to."""
        return [self.name, f"{self.name}:{self.version}"] if self.version else [self.name]
