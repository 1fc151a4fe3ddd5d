"""Managed background processes: start detached, wait until healthy, stop by PID (only our own)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tasks.errors import SlmopsError


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start ``python -m …`` detached from this process (it outlives the CLI); return its PID."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True)
    return proc.pid


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM, wait for a graceful exit, then SIGKILL."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def wait_healthy(url: str, pid: int, log_file: Path, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail early with the log tail if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-12:]) if log_file.exists() else ""
            raise SlmopsError(f"process {pid} exited before becoming healthy; log {log_file}:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SlmopsError(f"{url} not healthy after {timeout_s:.0f}s (log {log_file})")
