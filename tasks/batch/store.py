"""Where a batch writes: a local folder or an ``s3://bucket/prefix``, with writes that are all-or-nothing.

Locally a write goes to a private temp file, is flushed and fsynced, then renamed over the name (and the folder
fsynced), so a reader — or a run killed with ``kill -9`` at any moment — sees the old bytes or the new, never a
torn file. An S3 ``PUT`` is atomic already: an object exists whole or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from tasks.errors import DataSourceError, SlmopsError

TEMP_PREFIX = ".tmp-"


class BatchLocked(SlmopsError):
    """Another process is writing the same batch output."""


class OutputStore(Protocol):
    """The output location of one batch run."""

    uri: str

    def read(self, name: str) -> bytes | None:
        """The bytes of ``name``, or None when it does not exist."""

    def write(self, name: str, data: bytes) -> None:
        """Create or replace ``name`` atomically."""

    def names(self, prefix: str) -> list[str]:
        """Names under ``prefix`` (``parts/``), sorted; temp files left by a killed writer are not listed."""

    def location(self, name: str) -> str:
        """Path or URI of ``name`` for messages and manifests."""


class LocalStore:
    """A local output folder."""

    def __init__(self, path: str | Path):
        self.root = Path(path).expanduser().resolve()
        self.uri = str(self.root)
        self._lock_fh = None

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o644)  # mkstemp makes 0600; outputs are for others to read
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    def names(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}{p.name}" for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith(TEMP_PREFIX))

    def location(self, name: str) -> str:
        return str(self.root / name)

    def remove_temp_files(self) -> int:
        """Delete temp files a killed writer left behind; return how many."""
        stale = [p for p in self.root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def lock(self) -> None:
        """Hold ``.lock`` in the folder for this process's lifetime, or raise BatchLocked naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")  # noqa: SIM115 - held open until unlock()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise BatchLocked(f"another batch run (pid {holder}) is writing {self.root}; wait for it or use "
                              "another --output") from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def unlock(self) -> None:
        """Release the folder's lock (the kernel releases it too when the process dies)."""
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None


class S3Store:
    """An ``s3://bucket/prefix`` (boto3 honours ``AWS_ENDPOINT_URL``)."""

    def __init__(self, uri: str):
        import boto3

        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise DataSourceError(uri, ["not an s3://bucket/prefix URI"])
        self.uri, self.bucket, self.prefix = uri.rstrip("/"), bucket, prefix.strip("/")
        self.client = boto3.client("s3")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise DataSourceError(self.uri, [f"cannot {what}: {exc}"]) from None

    def read(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise DataSourceError(self.uri, [f"cannot read {name}: {exc}"]) from None

    def write(self, name: str, data: bytes) -> None:
        self._call(f"write {name}", self.client.put_object, Bucket=self.bucket, Key=self._key(name), Body=data)

    def names(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = len(self.prefix) + 1 if self.prefix else 0
        pages = self._call("list objects", lambda: list(paginator.paginate(Bucket=self.bucket,
                                                                          Prefix=self._key(prefix))))
        return sorted(obj["Key"][start:] for page in pages for obj in page.get("Contents", []))

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"


def output_location(template: str, when: datetime) -> str:
    """``template`` with ``{date}`` and ``{time}`` replaced by ``when`` in UTC (a scheduled run's own slot), e.g.
    ``out/{date}/{time}`` → ``out/2026-11-23/0200``."""
    utc = when.astimezone(UTC)
    return template.replace("{date}", utc.strftime("%Y-%m-%d")).replace("{time}", utc.strftime("%H%M"))


def open_store(uri: str) -> LocalStore | S3Store:
    """The store for a local path or an ``s3://`` URI."""
    return S3Store(uri) if uri.startswith("s3://") else LocalStore(uri)
