"""``promote`` and ``rollback``: move an alias from the Prefect UI (typed forms); bound targets then follow."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from registry.history import move_alias, rollback_alias
from registry.tracking import registry_client
from tasks.settings import get_settings


class PromoteRequest(BaseModel, extra="forbid"):
    """Point an alias at a model version."""

    model: str = Field("demo-slm", description="Registered model name.")
    version: str = Field(pattern=r"^\d+$", description="Model version number to point the alias at.")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$", description="Alias to move.")
    reason: str = Field("promoted from the Prefect UI", description="Why (kept in the promotion history).")


class RollbackRequest(BaseModel, extra="forbid"):
    """Move an alias back to the version it held before its latest move."""

    model: str = Field("demo-slm", description="Registered model name.")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$", description="Alias to roll back.")


@flow(name="promote")
def promote(request: PromoteRequest) -> dict[str, Any]:
    """Move ``request.alias`` to ``request.version`` and record it; targets bound to the alias redeploy."""
    entry = move_alias(registry_client(get_settings().root), request.model, request.alias, request.version,
                       reason=request.reason)
    get_run_logger().info("%s@%s: %s → %s", request.model, request.alias, entry["previous"], entry["version"])
    return entry


@flow(name="rollback")
def rollback(request: RollbackRequest) -> dict[str, Any]:
    """Move ``request.alias`` back to its previous version and record it; bound targets follow."""
    entry = rollback_alias(registry_client(get_settings().root), request.model, request.alias)
    get_run_logger().info("%s@%s rolled back: %s → %s", request.model, request.alias, entry["previous"],
                          entry["version"])
    return entry
