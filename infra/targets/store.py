"""Deployment records: what serves where (``Deployment``), what a probe found (``DeploymentStatus``), and their
store in the state database (the platform's PostgreSQL, else a sqlite file), with one lock per deployment so
deploy, rollback and undeploy of one name never interleave, on any worker."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
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


STATE_DB_ENV = "SLMOPS_STATE_DATABASE"
MIGRATIONS = Path(__file__).resolve().parent / "state_migrations"
_engines: dict[str, Any] = {}
_guard = threading.Lock()


STATE_DB_VARIABLE = "slmops_state_database"  # the Prefect variable the platform publishes it in


def state_database(root: Path) -> str:
    """Where deployment records live: ``SLMOPS_STATE_DATABASE`` when set (``slmops up`` sets it for its worker and
    records it for every command); else what the platform at ``PREFECT_API_URL`` published (so a fresh pod that
    knows only the platform's URLs finds them); else the sqlite file ``state.db`` under ``root``."""
    return (os.environ.get(STATE_DB_ENV) or _published(os.environ.get("PREFECT_API_URL", ""))
            or f"sqlite:///{Path(root).resolve() / 'state.db'}")


@functools.lru_cache(maxsize=8)
def _published(prefect_api_url: str) -> str | None:
    if not prefect_api_url:
        return None
    try:
        from prefect.variables import Variable

        return Variable.get(STATE_DB_VARIABLE, default=None)
    except Exception as exc:  # an unreachable Prefect API: the local default, and say so
        log.warning("could not ask %s where the deployment state is (%s); using the local state.db",
                    prefect_api_url, exc)
        return None


def shown_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def state_engine(url: str) -> Any:
    """One engine per database URL in this process, its schema migrated once (alembic, under a lock)."""
    with _guard:
        if url not in _engines:
            parsed = sa.engine.make_url(url)
            if parsed.get_backend_name() == "sqlite":
                db = Path(parsed.database or "")
                db.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))  # private: local records hold admin tokens
                engine = sa.create_engine(url, connect_args={"timeout": 30})
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            try:
                _migrate(engine)
            except sa.exc.SQLAlchemyError as exc:
                raise DeployError(f"deployment state database {shown_url(url)}: {str(exc).splitlines()[0]}") from None
            _engines[url] = engine
        return _engines[url]


def _migrate(engine: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _file_lock(Path(engine.url.database).with_suffix(".migrate.lock")) if engine.url.get_backend_name() == \
            "sqlite" else contextlib.nullcontext(), engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two workers starting at once migrate one after the other
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("migrate")})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_key(text: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for ``text``."""
    return int.from_bytes(hashlib.sha256(f"slmops:{text}".encode()).digest()[:8], "big", signed=True)


_DEPLOYMENTS = sa.table("deployments", sa.column("target"), sa.column("name"), sa.column("record"),
                        sa.column("revision"), sa.column("updated_at"))
_STARTS = sa.table("deployment_starts", sa.column("target"), sa.column("name"), sa.column("pid"),
                   sa.column("process"), sa.column("since"))
_LOCKS = sa.table("deployment_locks", sa.column("target"), sa.column("name"), sa.column("holder"),
                  sa.column("since"))


class DeploymentStore:
    """Deployment records of one target in the state database (``state_database``), one row per name, locked per
    name: PostgreSQL advisory locks hold across workers and machines; on sqlite, a file lock beside the database
    holds across the processes of the one machine that has the file. Records written by older slmops as JSON
    under ``<home>/deployments/<target>/`` are imported on first use (each file is then renamed ``.imported``)."""

    def __init__(self, root: Path, target: str, url: str | None = None):
        self.root, self.target = Path(root), target
        self.url = url or state_database(root)
        self.engine = state_engine(self.url)
        self._import_json()

    def where(self) -> str:
        """The database holding the records, for messages (no password)."""
        return shown_url(self.url)

    def load(self, name: str) -> Deployment | None:
        """The record, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_DEPLOYMENTS.c.record).where(
                _DEPLOYMENTS.c.target == self.target, _DEPLOYMENTS.c.name == name)).first()
        return Deployment.model_validate_json(row[0]) if row else None

    def save(self, deployment: Deployment) -> None:
        """Insert or replace the record in one transaction (its revision goes up by one)."""
        where = (_DEPLOYMENTS.c.target == self.target, _DEPLOYMENTS.c.name == deployment.name)
        values = {"record": deployment.model_dump_json(), "updated_at": now()}
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(_DEPLOYMENTS).where(*where).values(
                **values, revision=_DEPLOYMENTS.c.revision + 1)).rowcount
            if not done:
                conn.execute(sa.insert(_DEPLOYMENTS).values(target=self.target, name=deployment.name, revision=1,
                                                            **values))

    def delete(self, name: str) -> None:
        """Forget the record."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(_DEPLOYMENTS).where(_DEPLOYMENTS.c.target == self.target,
                                                       _DEPLOYMENTS.c.name == name))

    def all(self) -> list[Deployment]:
        """Every record of this target, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_DEPLOYMENTS.c.record).where(_DEPLOYMENTS.c.target == self.target)
                                .order_by(_DEPLOYMENTS.c.name)).all()
        return [Deployment.model_validate_json(r[0]) for r in rows]

    def note_start(self, name: str, pid: int, process: str) -> None:
        """Remember a process a deploy of ``name`` started (``process``: its identity as JSON) until the deploy
        records or stops it, so that a deploy killed midway leaves it for the next one to stop."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(_STARTS).where(_STARTS.c.target == self.target, _STARTS.c.name == name,
                                                  _STARTS.c.pid == pid))
            conn.execute(sa.insert(_STARTS).values(target=self.target, name=name, pid=pid, process=process,
                                                   since=now()))

    def forget_starts(self, name: str, pids: list[int] | None = None) -> None:
        """Drop the notes of ``pids`` (default: all of ``name``'s)."""
        where = [_STARTS.c.target == self.target, _STARTS.c.name == name]
        if pids is not None:
            where.append(_STARTS.c.pid.in_(pids))
        with self.engine.begin() as conn:
            conn.execute(sa.delete(_STARTS).where(*where))

    def starts(self, name: str) -> list[str]:
        """The identities (JSON) of the processes noted for ``name``."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(_STARTS.c.process).where(
                _STARTS.c.target == self.target, _STARTS.c.name == name).order_by(_STARTS.c.since)).all()]

    @contextlib.contextmanager
    def lock(self, name: str, timeout_s: float) -> Iterator[None]:
        """Hold deployment ``name`` for one deploy, rollback or undeploy: wait up to ``timeout_s`` for a holder to
        finish, then raise a DeployError naming it. A holder that dies releases the lock with its connection
        (PostgreSQL) or its file descriptor (sqlite)."""
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {now()}"
        if self.engine.dialect.name == "postgresql":
            with self._advisory_lock(name, timeout_s, holder):
                yield
        else:
            with self._flock(name, timeout_s, holder):
                yield

    def _busy(self, name: str, holder: str, timeout_s: float) -> DeployError:
        return DeployError(f"another deploy, rollback or undeploy of {self.target} deployment {name!r} is running "
                           f"({holder or 'unknown holder'}); gave up after {timeout_s:.0f}s")

    @contextlib.contextmanager
    def _advisory_lock(self, name: str, timeout_s: float, holder: str) -> Iterator[None]:
        key = lock_key(f"deploy:{self.target}/{name}")
        where = (_LOCKS.c.target == self.target, _LOCKS.c.name == name)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            deadline, waiting = time.monotonic() + timeout_s, False
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                current = conn.execute(sa.select(_LOCKS.c.holder).where(*where)).scalar()
                if time.monotonic() >= deadline:
                    raise self._busy(name, current, timeout_s)
                if not waiting:
                    log.info("waiting for %s deployment %r: %s", self.target, name, current)
                    waiting = True
                time.sleep(0.2)
            try:
                conn.execute(sa.delete(_LOCKS).where(*where))
                conn.execute(sa.insert(_LOCKS).values(target=self.target, name=name, holder=holder, since=now()))
                yield
            finally:
                conn.execute(sa.delete(_LOCKS).where(*where))
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    @contextlib.contextmanager
    def _flock(self, name: str, timeout_s: float, holder: str) -> Iterator[None]:
        folder = Path(self.engine.url.database).parent / "locks" / self.target
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline, waiting = time.monotonic() + timeout_s, False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    current = os.pread(fd, 200, 0).decode(errors="replace")
                    if time.monotonic() >= deadline:
                        raise self._busy(name, current, timeout_s) from None
                    if not waiting:
                        log.info("waiting for %s deployment %r: %s", self.target, name, current)
                        waiting = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock; the file stays (removing it would let a waiter lock a file nobody opens)

    def _import_json(self) -> None:
        """Records an older slmops wrote under ``<root>/deployments/<target>/``, imported once (never over a row)."""
        folder = self.root / "deployments" / self.target
        if not folder.is_dir() or not any(folder.glob("*.json")):
            return
        with _file_lock(folder / ".import.lock"):
            for path in sorted(folder.glob("*.json")):
                record = Deployment.model_validate_json(path.read_text())
                if self.load(record.name) is None:
                    self.save(record)
                    log.info("imported %s deployment %r from %s into %s", self.target, record.name, path,
                             self.where())
                path.replace(path.with_suffix(".json.imported"))


def now() -> str:
    """UTC timestamp for records."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
