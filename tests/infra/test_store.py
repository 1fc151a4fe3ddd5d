"""Deployment records in the state database: private from creation, concurrent writers lose nothing, one operation
per deployment at a time (across processes; on PostgreSQL, the one on 127.0.0.1:5432, with advisory locks), and
JSON records of an older slmops imported once."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from infra.targets.store import DeployError, Deployment, DeploymentStore
from tasks.records import ModelRelease
from tests.fixtures.postgres import POSTGRES, admin_execute, drop_databases, require_postgres


def hold_lock(root: Path, url: str | None = None) -> subprocess.Popen:
    """Another process holding deployment 'tiny''s lock (it prints 'held' once it does)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom infra.targets.store import DeploymentStore\n"
         f"with DeploymentStore({str(root)!r}, 'local', {url!r}).lock('tiny', 10):\n"
         "    print('held', flush=True)\n    time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)


def revision(store: DeploymentStore, name: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT revision FROM deployments WHERE target = :t AND name = :n"),
                            {"t": store.target, "n": name}).scalar()


def record(version: str, token: str = "secret") -> Deployment:
    return Deployment(name="tiny", target="local", endpoint="http://127.0.0.1:1/v1", since="now",
                      release=ModelRelease(name="tiny", version=version, onnx_dir="/m"), details={"token": token})


def test_record_is_private_from_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a permissive umask and no chmod at all: only a file created 0600 can end up 0600
    store = DeploymentStore(tmp_path, "local")
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    old_umask = os.umask(0)
    try:
        store.save(record("1"))
    finally:
        os.umask(old_umask)
    assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600
    assert store.load("tiny").details["token"] == "secret"


def test_concurrent_saves_lose_nothing(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, "local")
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for n in range(60):
                store.save(record(f"{i}.{n}"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.load("tiny").release.version.endswith(".59")
    assert revision(store, "tiny") == 6 * 60, "every write counted"


def test_lock_lets_one_thread_in_at_a_time(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, "local")
    inside: list[tuple[float, float]] = []

    def hold() -> None:
        with store.lock("tiny", timeout_s=60):
            entered = time.monotonic()
            time.sleep(0.3)
            inside.append((entered, time.monotonic()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted(inside)
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_lock_held_by_another_process_names_it_and_is_freed_when_it_exits(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = DeploymentStore(tmp_path, "local")
        busy = rf"deployment 'tiny' is running \(pid {holder.pid} on .* since .*gave up"
        with pytest.raises(DeployError, match=busy), store.lock("tiny", timeout_s=0.5):
            pass
        with store.lock("other", timeout_s=0.5):  # other names are not blocked
            pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock("tiny", timeout_s=5):  # the kernel released the dead holder's lock
        pass


def test_json_records_of_an_older_slmops_are_imported_once(tmp_path: Path) -> None:
    legacy = tmp_path / "deployments" / "local"
    legacy.mkdir(parents=True)
    (legacy / "tiny.json").write_text(record("3").model_dump_json(indent=2))
    store = DeploymentStore(tmp_path, "local")
    assert store.load("tiny") == record("3")
    assert not (legacy / "tiny.json").exists() and (legacy / "tiny.json.imported").is_file()
    store.save(record("4"))
    (legacy / "tiny.json").write_text(record("3").model_dump_json())  # a stale copy comes back
    assert DeploymentStore(tmp_path, "local").load("tiny").release.version == "4", "never imported over a row"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    require_postgres()
    name = f"slmops_state_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES}/{name}"
    drop_databases(name)


def test_on_postgresql_two_workers_share_records_and_locks(pg_url: str, tmp_path: Path) -> None:
    # two workers with separate homes, as two pods: each migrates the schema at once, then sees the other's record
    starts = [subprocess.Popen([sys.executable, "-c", "from infra.targets.store import DeploymentStore\n"
                                f"DeploymentStore({str(tmp_path / f'w{i}')!r}, 'local', {pg_url!r})"])
              for i in range(2)]
    assert [p.wait(60) for p in starts] == [0, 0]
    first, second = (DeploymentStore(tmp_path / f"w{i}", "local", pg_url) for i in range(2))
    first.save(record("5"))
    assert second.load("tiny") == record("5") and [d.name for d in second.all()] == ["tiny"]
    holder = hold_lock(tmp_path / "w0", pg_url)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DeployError, match=rf"'tiny' is running \(pid {holder.pid} on .*gave up after 1s"), \
                second.lock("tiny", timeout_s=1):
            pass
        with second.lock("other", timeout_s=1):
            pass
    finally:
        holder.kill()  # as a worker dies mid-deploy: its connection goes, and the lock with it
        holder.wait()
    with second.lock("tiny", timeout_s=10):
        second.delete("tiny")
    assert first.load("tiny") is None
