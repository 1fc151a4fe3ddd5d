"""The flow-run starter: a forked run gets the client's environment, directory and output, and its exit code and
signals travel through the client; without a starter the client starts the run cold.

A real starter process and real clients (``python -I -S starter_client.py``) over a real Unix socket; the run
module is a small probe in place of ``prefect.engine`` (the platform tests run real flow runs through it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import process
from infra.platform.starter import socket_path
from infra.platform.state import unix_socket_accepts

REPO = Path(__file__).resolve().parents[3]
CLIENT = REPO / "infra" / "platform" / "starter_client.py"


@pytest.fixture
def starter(tmp_path):
    sock = tmp_path / "s.sock"
    ref = process.start(["-m", "infra.platform.starter", "--socket", str(sock), "--preload", "json",
                         "--module", "tests.infra.platform.starter_probe"], tmp_path / "starter.log", {})
    deadline = time.monotonic() + 30
    while not unix_socket_accepts(str(sock)):
        assert ref.alive() and time.monotonic() < deadline, (tmp_path / "starter.log").read_text()
        time.sleep(0.05)
    yield sock, ref
    process.stop(ref)


def client(sock: Path | None, cwd: Path, **env: str) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "SLMOPS_STARTER_SOCKET"} | env
    if sock is not None:
        full["SLMOPS_STARTER_SOCKET"] = str(sock)
    return subprocess.Popen([sys.executable, "-I", "-S", str(CLIENT)], cwd=cwd, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_forked_run_gets_the_clients_environment_directory_output_and_exit_code(starter, tmp_path) -> None:
    sock, ref = starter
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = client(sock, workdir, PROBE_VALUE="from-the-worker", PROBE_EXIT="3")
    out, err = run.communicate(timeout=30)
    assert run.returncode == 3, err
    assert f"cwd={workdir}" in out and "probe=from-the-worker" in out and "to stderr" in err
    forked = int(out.split("pid=")[1].split()[0])
    assert forked not in (run.pid, ref.pid)  # neither the client nor the server ran it: a fork of the server
    assert ref.alive()  # the server serves on
    again = client(sock, workdir, PROBE_EXIT="0")
    assert again.communicate(timeout=30) and again.returncode == 0


def test_sigterm_to_the_client_reaches_the_forked_run(starter, tmp_path) -> None:
    sock, _ = starter
    run = client(sock, tmp_path, PROBE_WAIT="1")
    assert run.stdout.readline().startswith("pid=") and run.stdout.readline().strip() == "waiting"
    run.send_signal(signal.SIGTERM)  # what Prefect's worker does to cancel a run
    assert run.wait(timeout=30) == 143


def test_a_probe_that_sends_nothing_forks_nothing_and_a_missing_starter_means_a_cold_start(starter, tmp_path) -> None:
    sock, ref = starter
    assert unix_socket_accepts(str(sock)) and ref.alive()
    assert "malformed" not in (tmp_path / "starter.log").read_text()
    run = client(tmp_path / "absent.sock", tmp_path)  # no starter: the client becomes `python -m prefect.engine`
    _, err = run.communicate(timeout=120)
    assert "starting the flow run in a fresh interpreter" in err and "Invalid flow run id" in err
    assert run.returncode == 1


def test_the_socket_is_private_and_a_long_home_gets_a_short_private_path(starter, tmp_path) -> None:
    sock, _ = starter
    assert sock.stat().st_mode & 0o777 == 0o600
    long_home = tmp_path / ("h" * 120)
    path = socket_path(long_home)
    assert len(os.fsencode(path)) < 108 and path.parent.stat().st_mode & 0o777 == 0o700
    assert socket_path(long_home) == path != socket_path(tmp_path / ("g" * 120))
    assert socket_path(tmp_path) == tmp_path.resolve() / "platform" / "starter.sock"
