"""Deployment records: what serves where (``Deployment``), what a probe found (``DeploymentStatus``), and the
on-disk store with one lock per deployment so deploy, rollback and undeploy of one name never interleave."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.errors import SlmopsError
from tasks.records import ModelRelease

log = logging.getLogger(__name__)


class DeployError(SlmopsError):
    """A deploy did not reach its post-condition; the message says what serves now."""


class Deployment(BaseModel):
    """What version serves where, since when, and what served before (for rollback)."""

    name: str = Field(description="Deployment name (defaults to the registered model name).")
    target: str
    release: ModelRelease
    endpoint: str
    since: str
    previous: ModelRelease | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="Target-specific state (processes, ports…).")


class DeploymentStatus(BaseModel):
    """A deployment's record beside what its target answers now."""

    name: str
    target: str
    state: Literal["up", "down", "drift"] = Field(description="up: serves the recorded version; drift: serves "
                                                  "another one; down: does not serve (see problem).")
    recorded_version: str
    served_version: str | None = Field(description="Version the target answers with now (None: no answer).")
    endpoint: str
    since: str
    previous_version: str | None
    log: str | None = Field(description="Log file of what serves, where we keep one.")
    problem: str | None = Field(description="Why the deployment is down or drifted.")
    cost_per_hour: float | None = Field(None, description="USD per hour of what serves, where the target knows it.")
    record: Deployment = Field(exclude=True, repr=False, description="The full record (never printed: secrets).")

    @classmethod
    def probed(cls, record: Deployment, served: str | None, problem: str | None = None,
               log_file: str | None = None) -> DeploymentStatus:
        """The status of ``record`` given the version its target serves (None and/or a problem: down)."""
        wanted = record.release.version
        state = "down" if served is None or problem else "up" if served == wanted else "drift"
        if state == "drift":
            problem = f"serves version {served}, the record says {wanted}"
        return cls(name=record.name, target=record.target, state=state, recorded_version=wanted,
                   served_version=served, endpoint=record.endpoint, since=record.since,
                   previous_version=record.previous.version if record.previous else None, log=log_file,
                   problem=problem, record=record)


class DeploymentStore:
    """JSON records under ``<home>/deployments/<target>/<name>.json``, written atomically, locked per name."""

    def __init__(self, root: Path, target: str):
        self.target = target
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
        """Replace the record atomically: a private (0600) temp file of its own, then ``os.replace``.

        Private from creation because a local record holds the proxy's admin token; a temp file per write so
        two writers never share one.
        """
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{deployment.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(deployment.model_dump_json(indent=2))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(deployment.name))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> None:
        """Forget the record."""
        self.path(name).unlink(missing_ok=True)

    def all(self) -> list[Deployment]:
        """Every record of this target."""
        return [Deployment.model_validate_json(p.read_text()) for p in sorted(self.folder.glob("*.json"))]

    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float) -> Iterator[None]:
        """Hold ``<name>.lock`` (fcntl.flock: excludes other processes and other threads alike).

        Waits up to ``timeout_s`` for a holder to finish, then raises a DeployError naming it. The lock file
        stays (removing it would let a waiter lock a file nobody else opens); the kernel drops the lock when
        its holder exits, however it exits.
        """
        path = self.folder / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline, waiting = time.monotonic() + timeout_s, False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode(errors="replace") or "unknown holder"
                    if time.monotonic() >= deadline:
                        raise DeployError(f"another deploy, rollback or undeploy of {self.target} deployment "
                                          f"{name!r} is running ({holder}); gave up after {timeout_s:.0f}s "
                                          f"(lock file {path})") from None
                    if not waiting:
                        log.info("waiting for %s deployment %r: %s", self.target, name, holder)
                        waiting = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {now()}".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock


def now() -> str:
    """UTC timestamp for records."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
