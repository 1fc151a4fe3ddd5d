"""The target interface, deployment records kept on disk, and the golden-prompt check."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from tasks.errors import SlmopsError
from tasks.records import ModelRelease


class DeployError(SlmopsError):
    """A deploy did not reach its post-condition; what was serving before still serves."""


class Deployment(BaseModel):
    """What version serves where, since when, and what served before (for rollback)."""

    name: str = Field(description="Deployment name (defaults to the registered model name).")
    target: str
    release: ModelRelease
    endpoint: str
    since: str
    previous: ModelRelease | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="Target-specific state (PIDs, ports…).")


class Target(Protocol):
    """Every deployment target implements these four verbs."""

    def deploy(self, release: ModelRelease) -> Deployment:
        """Serve ``release``; done only when it serves and a golden prompt passes."""

    def status(self) -> Deployment | None:
        """The current deployment, or None."""

    def rollback(self) -> Deployment:
        """Serve the previous release again."""

    def undeploy(self) -> None:
        """Stop serving and forget the deployment."""


class RecordedTarget:
    """What every target shares: its record store, rollback to the previous release, and undeploy."""

    kind = ""

    def __init__(self, cfg: Any, root: Path):
        self.cfg, self.root = cfg, Path(root)
        self.store = DeploymentStore(root, self.kind)

    def deploy(self, release: ModelRelease) -> Deployment:  # pragma: no cover - each target implements it
        raise NotImplementedError

    def _teardown(self, record: Deployment) -> None:  # pragma: no cover - each target implements it
        raise NotImplementedError

    def record(self, name: str | None) -> Deployment:
        """The record of ``name`` (default: the configured name), or a DeployError listing what is deployed."""
        name = name or self.cfg.name or ""
        record = self.store.load(name)
        if record is None:
            known = [d.name for d in self.store.all()]
            raise DeployError(f"no {self.kind} deployment {name!r}; deployed: {known or 'none'}")
        return record

    def rollback(self, name: str | None = None) -> Deployment:
        """Serve the previous release again (through a normal, fully checked deploy)."""
        record = self.record(name)
        if record.previous is None:
            raise DeployError(f"{self.kind} deployment {record.name!r} has no previous version to roll back to")
        return self.deploy(record.previous)

    def undeploy(self, name: str | None = None) -> None:
        """Stop serving ``name`` and forget its record."""
        record = self.record(name)
        self._teardown(record)
        self.store.delete(record.name)


class DeploymentStore:
    """JSON records under ``<home>/deployments/<target>/<name>.json``, written atomically."""

    def __init__(self, root: Path, target: str):
        self.folder = Path(root) / "deployments" / target
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """Record file of deployment ``name``."""
        return self.folder / f"{name}.json"

    def load(self, name: str) -> Deployment | None:
        """The record, or None."""
        path = self.path(name)
        return Deployment.model_validate_json(path.read_text()) if path.is_file() else None

    def save(self, deployment: Deployment) -> None:
        """Replace the record atomically (readers never see half a file)."""
        tmp = self.path(deployment.name).with_suffix(".tmp")
        tmp.write_text(deployment.model_dump_json(indent=2))
        os.chmod(tmp, 0o600)  # may hold an admin token for the local proxy
        os.replace(tmp, self.path(deployment.name))

    def delete(self, name: str) -> None:
        """Forget the record."""
        self.path(name).unlink(missing_ok=True)

    def all(self) -> list[Deployment]:
        """Every record of this target."""
        return [Deployment.model_validate_json(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


def now() -> str:
    """UTC timestamp for records."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_answer(answer: str, expect: str | None, where: str) -> None:
    """A golden answer must be non-empty and, where an expectation is configured, contain it."""
    if not answer.strip():
        raise DeployError(f"{where}: golden prompt got an empty answer")
    if expect is not None and expect not in answer:
        raise DeployError(f"{where}: golden prompt answered {answer!r}, expected it to contain {expect!r}")
