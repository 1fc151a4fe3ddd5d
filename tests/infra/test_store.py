"""Deployment records: private from creation, one temp file per write, one operation per deployment at a time."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infra.targets.store import DeployError, Deployment, DeploymentStore
from tasks.records import ModelRelease


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
    assert store.path("tiny").stat().st_mode & 0o777 == 0o600
    assert store.load("tiny").details["token"] == "secret"


def test_concurrent_saves_each_use_their_own_temp_file(tmp_path: Path) -> None:
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
    assert sorted(p.name for p in store.folder.iterdir()) == ["tiny.json"], "no temp file is left behind"
    assert store.load("tiny").release.version.endswith(".59")


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
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom infra.targets.store import DeploymentStore\n"
         f"with DeploymentStore({str(tmp_path)!r}, 'local').lock('tiny', 10):\n"
         "    print('held', flush=True)\n    time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = DeploymentStore(tmp_path, "local")
        busy = rf"deployment 'tiny' is running \(pid {holder.pid} since .*gave up"
        with pytest.raises(DeployError, match=busy), store.lock("tiny", timeout_s=0.5):
            pass
        with store.lock("other", timeout_s=0.5):  # other names are not blocked
            pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock("tiny", timeout_s=5):  # the kernel released the dead holder's lock
        pass
