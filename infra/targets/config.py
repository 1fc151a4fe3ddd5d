"""Target configs: one model per target, discriminated by ``target`` (the deploy stage's config)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tasks.config import GgufType, StageConfig


class _Common(StageConfig):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             description="Deployment name (default: the registered model name).")
    golden_prompt: str = Field("Reverse: a b c", min_length=1, description="Smoke-test prompt sent after deploy.")
    golden_expect: str | None = Field(None, description="Text the golden answer must contain (default: any "
                                      "non-empty answer).")
    golden_max_tokens: int = Field(16, gt=0, description="Tokens the golden answer may use.")
    lock_timeout_s: float = Field(900, gt=0, description="How long to wait for another deploy, rollback or "
                                  "undeploy of the same deployment to finish before giving up.")


DEFAULT_PORT = 8080


class LocalTargetConfig(_Common):
    """Our serving runtime as managed background processes behind a stable-port proxy (blue/green)."""

    target: Literal["local"] = "local"
    port: int | None = Field(None, ge=1, le=65535, description="Stable port clients use (127.0.0.1). Default: "
                             "the deployment's current port, 8080 for a new one; another port moves it there.")
    max_batch_size: int = Field(8, gt=0, description="Requests batched together at most.")
    max_queue: int = Field(64, gt=0, description="Waiting requests before 503 + Retry-After.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key "
                                    "(the key itself is never stored or logged).")
    startup_timeout_s: float = Field(120, gt=0, description="How long a new version may take to become healthy.")
    drain_timeout_s: float = Field(60, gt=0, description="How long the old version may finish in-flight requests.")
    capture_percent: float = Field(0.0, ge=0, le=100, description="Data capture: share of requests whose bodies "
                                   "are kept (0: off), replayable with slmops batch.")
    capture_destination: str = Field("", description="Data capture: directory or s3://bucket/prefix.")


class FoundryTargetConfig(_Common):
    """Foundry Local: the model layout in its cache, registered and loaded with foundry-local-sdk."""

    target: Literal["foundry"] = "foundry"
    cache_dir: str | None = Field(None, description="Foundry Local model cache (default $SLMOPS_HOME/foundry/cache).")


class OllamaTargetConfig(_Common):
    """Ollama: GGUF + Modelfile created through Ollama's REST API."""

    target: Literal["ollama"] = "ollama"
    host: str = Field("http://127.0.0.1:11434", description="Ollama server URL.")
    gguf: list[GgufType] = Field(["Q4_K_M", "Q4_0", "q8_0", "f16"], min_length=1,
                                 description="GGUF types to use, in order of preference.")
    temperature: float = Field(0.0, ge=0, le=2, description="PARAMETER temperature in the Modelfile.")
    num_ctx: int | None = Field(None, gt=0, description="PARAMETER num_ctx (default: the model's context).")


DeployConfig = Annotated[LocalTargetConfig | FoundryTargetConfig | OllamaTargetConfig, Field(discriminator="target")]
