"""What ``slmops up`` started, where it listens and how to reach it: ``$SLMOPS_HOME/platform.json`` (0600)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from infra.process import ProcessRef
from infra.targets.store import STATE_DB_ENV

SERVICES = ("prefect", "mlflow", "receiver", "fleet", "starter", "worker")


class Service(BaseModel):
    """One managed process of the platform."""

    name: str
    url: str = Field("", description="Base URL (empty for the worker, which listens nowhere).")
    health: str = Field("", description="URL answering 200 while the service is healthy (``unix:PATH``: a socket "
                        "accepting connections).")
    process: ProcessRef
    log: str


class PlatformState(BaseModel):
    """The running platform, written by ``slmops up`` and read by every other command."""

    home: str
    database: str = Field(description="'sqlite' or the PostgreSQL server URL (without password), for display.")
    database_url: str | None = Field(None, description="The --database URL (None: sqlite), to restart alike.")
    artifacts_destination: str | None = Field(None, description="The --artifacts-destination of the MLflow "
                                              "server (None: mlartifacts/ under home).")
    results: str | None = Field(None, description="s3://bucket/prefix of flow runs' Prefect results (None: kept "
                                "in the run's process).")
    state_database: str | None = Field(None, description="URL of slmops' state database (deployment records).")
    prefect_api_url: str
    mlflow_uri: str
    receiver_url: str
    fleet_url: str | None = Field(None, description="The fleet controller devices enroll with and poll.")
    bindings: str = Field(description="Absolute path of the bindings file the platform follows.")
    repo: str = Field(description="Source checkout the worker runs flows from (prefect.yaml's directory).")
    started_at: str
    services: dict[str, Service] = Field(default_factory=dict)


def state_path(home: Path) -> Path:
    """``$SLMOPS_HOME/platform.json``."""
    return Path(home) / "platform.json"


def load_state(home: Path) -> PlatformState | None:
    """The recorded platform, or None when ``slmops up`` has not run (or ``down`` forgot it)."""
    path = state_path(home)
    return PlatformState.model_validate_json(path.read_text()) if path.is_file() else None


def save_state(state: PlatformState) -> None:
    """Write platform.json atomically, private from creation."""
    path = state_path(Path(state.home))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".platform-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        fh.write(state.model_dump_json(indent=2))
    os.replace(tmp, path)


def forget_state(home: Path) -> None:
    """Remove platform.json."""
    state_path(home).unlink(missing_ok=True)


def probe(service: Service, timeout_s: float = 2.0) -> str:
    """``up`` (process running and healthy), ``unhealthy`` (running, not answering) or ``down``."""
    if not service.process.alive():
        return "down"
    if not service.health:
        return "up"
    if service.health.startswith("unix:"):
        return "up" if unix_socket_accepts(service.health.removeprefix("unix:")) else "unhealthy"
    try:
        return "up" if httpx.get(service.health, timeout=timeout_s).status_code == 200 else "unhealthy"
    except httpx.HTTPError:
        return "unhealthy"


def unix_socket_accepts(path: str) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(path)
        except OSError:
            return False
    return True


def platform_environment(home: Path) -> dict[str, str]:
    """``PREFECT_API_URL``/``MLFLOW_TRACKING_URI``/``SLMOPS_STATE_DATABASE`` of the recorded platform (empty when
    none is recorded)."""
    state = load_state(home)
    if state is None:
        return {}
    return {"PREFECT_API_URL": state.prefect_api_url, "MLFLOW_TRACKING_URI": state.mlflow_uri,
            "SLMOPS_BINDINGS": state.bindings, **({STATE_DB_ENV: state.state_database} if state.state_database
                                                  else {})}
