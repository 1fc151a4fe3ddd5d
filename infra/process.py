"""Managed background processes: start detached, wait until healthy, stop only our own.

A PID alone does not name a process: once it exits, the kernel may hand the PID to a stranger. So every
process we start is recorded as a ``ProcessRef`` — PID, start time (``/proc/<pid>/stat`` field 22, clock ticks
since boot), boot id and command line — and is signalled only while all of them still match.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from enum import StrEnum
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from tasks.errors import SlmopsError

log = logging.getLogger(__name__)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Liveness(StrEnum):
    """What a recorded process is now."""

    RUNNING = "running"
    GONE = "gone"
    STRANGER = "stranger"  # the PID now belongs to another process


class ProcessRef(BaseModel):
    """Who a process is, not only its PID: enough to recognise it after its PID was reused."""

    pid: int = Field(gt=0, description="Process id.")
    start_ticks: int = Field(description="Start time in clock ticks after boot (/proc/<pid>/stat field 22).")
    boot_id: str = Field(description="Kernel boot id the start time counts from.")
    cmdline: list[str] = Field(description="Command line the process was started with.")

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """The identity of running process ``pid``, or None when there is none (or only a zombie)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return None
        if fields[0] in ("Z", "X"):  # fields[0] is field 3 (state); fields[19] is field 22 (starttime)
            return None
        return cls(pid=pid, start_ticks=int(fields[19]), boot_id=BOOT_ID.read_text().strip(),
                   cmdline=[part.decode(errors="replace") for part in cmdline if part])

    def liveness(self) -> Liveness:
        """RUNNING while this very process exists; GONE once it exited; STRANGER when its PID was reused."""
        now = ProcessRef.of(self.pid)
        if now is None:
            return Liveness.GONE
        if (now.start_ticks, now.boot_id) != (self.start_ticks, self.boot_id):
            return Liveness.STRANGER
        if now.cmdline == self.cmdline:
            return Liveness.RUNNING
        # the same process: with no command line it is exiting (its memory is released before it becomes a
        # zombie, slowly for a large one); with another one it has exec'd another program
        return Liveness.STRANGER if now.cmdline else Liveness.GONE

    def alive(self) -> bool:
        """True while this very process runs."""
        return self.liveness() is Liveness.RUNNING

    def describe(self) -> str:
        """``pid N (cmd …)`` for messages."""
        return f"pid {self.pid} ({' '.join(self.cmdline)[:160]})"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (we could bind it now)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(args: list[str], log_file: Path, env: dict[str, str] | None = None, inherit_env: bool = True) -> ProcessRef:
    """Start ``python …`` detached from this process (it outlives the CLI); return who it is.

    ``env`` is added to this process's environment, or is the whole environment when ``inherit_env`` is False.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log_fh:
        proc = subprocess.Popen([sys.executable, *args], stdout=log_fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})} if inherit_env else env,
                                start_new_session=True)
    # Popen returns once exec has begun; the new command line shows a moment later
    deadline = time.monotonic() + 10
    while (ref := ProcessRef.of(proc.pid)) is not None and not ref.cmdline and time.monotonic() < deadline:
        time.sleep(0.005)
    if ref is None or not ref.cmdline:
        proc.kill()
        proc.wait()
        raise SlmopsError(f"{' '.join(args)} exited at once (code {proc.returncode}); log {log_file}")
    return ref


def alive(ref: ProcessRef) -> bool:
    """True while the process ``ref`` names runs (not a zombie, PID not reused)."""
    return ref.alive()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # reap it if it is our child, so it is no zombie
        os.waitpid(pid, os.WNOHANG)


def stop(ref: ProcessRef, grace_s: float = 20.0) -> Liveness:
    """SIGTERM, wait for a graceful exit, then SIGKILL — only while ``ref`` still names the same process.

    Returns what the process was when asked: RUNNING (now stopped), GONE (nothing to do) or STRANGER (its PID
    belongs to another process now: left alone, with a warning).
    """
    found = ref.liveness()
    if found is Liveness.STRANGER:
        log.warning("stale process record: pid %s is now another process (%s), not %s; not signalling it",
                    ref.pid, " ".join((ProcessRef.of(ref.pid) or ref).cmdline)[:160], " ".join(ref.cmdline)[:160])
    if found is not Liveness.RUNNING:
        return found
    os.kill(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(ref.pid)
        if not ref.alive():
            return found
        time.sleep(0.1)
    if ref.alive():  # checked again right before the signal
        os.kill(ref.pid, signal.SIGKILL)
        for _ in range(50):
            _reap(ref.pid)
            if not ref.alive():
                break
            time.sleep(0.1)
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(ref: ProcessRef, grace_s: float = 20.0) -> Liveness:
    """Like ``stop``, for a process that forks workers (``mlflow server``, ``prefect worker``): signal its group.

    Every process we start leads its own session and group (``start_new_session``), so the group id is the
    leader's PID. While the leader runs, its identity is checked as in ``stop``; once it has exited, members
    still in that group are its descendants (a group id cannot be reused while it has members) and are stopped.
    """
    found = ref.liveness()
    if found is Liveness.STRANGER:
        log.warning("stale process record: pid %s is now another process; not signalling its group", ref.pid)
        return found
    if not _group_alive(ref.pid):
        return found
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(ref.pid)
        if not _group_alive(ref.pid):
            return found
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ref.pid, signal.SIGKILL)
    for _ in range(50):
        _reap(ref.pid)
        if not _group_alive(ref.pid):
            break
        time.sleep(0.1)
    return found


def wait_healthy(url: str, ref: ProcessRef, log_file: Path, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200 (often at first, a fast start is seen at once); fail early with the log
    tail if the process dies."""
    began = time.monotonic()
    deadline = began + timeout_s
    while time.monotonic() < deadline:
        _reap(ref.pid)
        if not ref.alive():
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-12:]) if log_file.exists() else ""
            raise SlmopsError(f"process {ref.pid} exited before becoming healthy; log {log_file}:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05 if time.monotonic() - began < 10 else 0.25)
    raise SlmopsError(f"{url} not healthy after {timeout_s:.0f}s (log {log_file})")
