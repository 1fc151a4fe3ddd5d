"""Environment settings (``SLMOPS_*``) and the embedded-default environment for Prefect."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where slmops keeps its state and how it uses the machine."""

    model_config = SettingsConfigDict(env_prefix="SLMOPS_", extra="ignore")

    home: Path = Field(Path(".slmops"), description="Root of all local state (Prefect, MLflow, models).")
    threads: int | None = Field(
        None, ge=1, description="Torch CPU threads; unset keeps torch's default (one per core)."
    )
    demo_size: Literal["full", "tiny"] = Field("full", description="Size of the demo assets demo:* refers to: "
                                               "full (a 1.7M-parameter teacher, ~2 min to make) or tiny (seconds; "
                                               "for trying the platform and for tests).")
    bindings: Path = Field(Path("configs/bindings.yaml"), description="Which targets follow which model@alias "
                           "(read by the redeploy and reconcile flows).")

    @property
    def root(self) -> Path:
        """The home directory as an absolute path (created on first use)."""
        path = self.home.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path


def get_settings() -> Settings:
    """Read the settings from the environment now (not cached: tests change it)."""
    return Settings()


def configure_environment(settings: Settings | None = None) -> Settings:
    """Point Prefect at project-local state unless the user configured it; call before importing prefect."""
    settings = settings or get_settings()
    root = settings.root
    prefect_home = root / "prefect"
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(prefect_home / "storage"))
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault(
            "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
        )
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,registry,infra")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # Olive (GPTQ, ExtractAdapters) phones home otherwise
    return settings
