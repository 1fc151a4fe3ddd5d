"""The target interface, what every target shares (locked deploy/rollback/undeploy over its records, status as
a probe), and the golden-prompt check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from infra.targets.store import DeployError, Deployment, DeploymentStatus, DeploymentStore, now
from tasks.records import ModelRelease

__all__ = ["Converged", "DeployError", "Deployment", "DeploymentStatus", "DeploymentStore", "RecordedTarget",
           "Target", "check_answer", "now"]


class Target(Protocol):
    """Every deployment target implements these four verbs."""

    def deploy(self, release: ModelRelease) -> Deployment:
        """Serve ``release``; done only when it serves and a golden prompt passes."""

    def status(self, name: str | None = None) -> DeploymentStatus | None:
        """Probe the deployment now: recorded vs served version, up/down; None when nothing is recorded."""

    def rollback(self, name: str | None = None) -> Deployment:
        """Serve the previous release again."""

    def undeploy(self, name: str | None = None) -> None:
        """Stop serving and forget the deployment."""


class Converged(BaseModel):
    """What ``RecordedTarget.converge`` found and did."""

    version: str | None
    served_before: str | None
    deployment: Deployment | None = None


class RecordedTarget:
    """What every target shares: its record store, one operation at a time per deployment name (a file lock
    around deploy, rollback and undeploy), rollback to the previous release, undeploy, and status.

    A target implements ``_deploy`` (called under the lock with the current record), ``_teardown`` and
    ``probe``.
    """

    kind = ""

    def __init__(self, cfg: Any, root: Path):
        self.cfg, self.root = cfg, Path(root)
        self.store = DeploymentStore(root, self.kind)

    def _deploy(self, release: ModelRelease, name: str, current: Deployment | None) -> Deployment:
        raise NotImplementedError  # pragma: no cover - each target implements it

    def _teardown(self, record: Deployment) -> None:
        raise NotImplementedError  # pragma: no cover - each target implements it

    def probe(self, record: Deployment) -> DeploymentStatus:
        """Ask the target what it serves for ``record`` now."""
        raise NotImplementedError  # pragma: no cover - each target implements it

    def _lock(self, name: str):
        return self.store.lock(name, self.cfg.lock_timeout_s)

    def _reap(self, name: str, record: Deployment | None) -> None:
        """Under ``name``'s lock: clean up after an earlier deploy that died midway (default: nothing to do)."""

    def record(self, name: str | None) -> Deployment:
        """The record of ``name`` (default: the configured name), or a DeployError listing what is deployed."""
        name = name or self.cfg.name or ""
        record = self.store.load(name)
        if record is None:
            known = [d.name for d in self.store.all()]
            raise DeployError(f"no {self.kind} deployment {name!r}; deployed: {known or 'none'}")
        return record

    def deploy(self, release: ModelRelease) -> Deployment:
        """Serve ``release`` under the deployment name (configured, else the model's); one deploy at a time."""
        name = self.cfg.name or release.name
        with self._lock(name):
            record = self.store.load(name)
            self._reap(name, record)
            return self._deploy(release, name, record)

    def converge(self, name: str, wanted: Callable[[], str | None],
                 release_of: Callable[[str], ModelRelease]) -> Converged:
        """Under ``name``'s lock: ask ``wanted()`` which version should serve now, probe what serves, and deploy
        ``release_of(version)`` only when it does not serve already. Asking under the lock is what makes
        concurrent movers agree: whichever runs last serves the latest answer, and none redeploys what serves."""
        with self._lock(name):
            version = wanted()
            record = self.store.load(name)
            self._reap(name, record)
            status = self.probe(record) if record else None
            before = status.served_version if status else None
            if version is None or (status is not None and status.state == "up" and before == version):
                return Converged(version=version, served_before=before)
            deployment = self._deploy(release_of(version), name, record)
            return Converged(version=version, served_before=before, deployment=deployment)

    def rollback(self, name: str | None = None) -> Deployment:
        """Serve the previous release again (through a normal, fully checked deploy)."""
        name = self.record(name).name  # fails at once, listing what exists
        with self._lock(name):
            record = self.record(name)  # read again under the lock: another deploy may have finished meanwhile
            self._reap(name, record)
            if record.previous is None:
                raise DeployError(f"{self.kind} deployment {name!r} has no previous version to roll back to")
            return self._deploy(record.previous, name, record)

    def undeploy(self, name: str | None = None) -> None:
        """Stop serving ``name`` and forget its record (a stale record is reported, and forgotten too)."""
        name = self.record(name).name
        with self._lock(name):
            record = self.record(name)
            self._reap(name, record)
            self._teardown(record)
            self.store.delete(name)

    def status(self, name: str | None = None) -> DeploymentStatus | None:
        """Probe ``name`` (default: the configured name) now; None when nothing is recorded."""
        record = self.store.load(name or self.cfg.name or "")
        return None if record is None else self.probe(record)

    def statuses(self) -> list[DeploymentStatus]:
        """Probe every recorded deployment of this target."""
        return [self.probe(record) for record in self.store.all()]


def check_answer(answer: str, expect: str | None, where: str) -> None:
    """A golden answer must be non-empty and, where an expectation is configured, contain it."""
    if not answer.strip():
        raise DeployError(f"{where}: golden prompt got an empty answer")
    if expect is not None and expect not in answer:
        raise DeployError(f"{where}: golden prompt answered {answer!r}, expected it to contain {expect!r}")
