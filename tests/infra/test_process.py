"""Managed processes are recognised by start time and command line, not by PID alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import process
from infra.process import Liveness, ProcessRef


@pytest.fixture
def stranger():
    """A process that is not ours to stop (stopped by this test, by its PID)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_start_records_start_time_and_command_line(tmp_path: Path) -> None:
    ref = process.start(["-c", "import time; time.sleep(300)"], tmp_path / "p.log")
    try:
        assert ref.cmdline == [sys.executable, "-c", "import time; time.sleep(300)"]
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        started = boot + ref.start_ticks / os.sysconf("SC_CLK_TCK")
        assert abs(started - time.time()) < 30, "start_ticks is /proc/<pid>/stat field 22 (ticks after boot)"
        assert ref.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert ref.liveness() is Liveness.RUNNING
    finally:
        assert process.stop(ref) is Liveness.RUNNING
    assert ref.liveness() is Liveness.GONE and process.stop(ref) is Liveness.GONE


def test_a_reused_pid_is_a_stranger_and_is_not_signalled(tmp_path: Path, stranger: subprocess.Popen,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ours = process.start(["-c", "import time; time.sleep(0.3)"], tmp_path / "p.log")
    while ours.alive():
        time.sleep(0.05)
    reused = ours.model_copy(update={"pid": stranger.pid})  # as if the kernel had handed our PID to `sleep`
    assert reused.liveness() is Liveness.STRANGER
    with caplog.at_level(logging.WARNING):
        assert process.stop(reused, grace_s=1) is Liveness.STRANGER
    assert stranger.poll() is None, "the stranger was not signalled"
    assert f"pid {stranger.pid} is now another process (sleep 300)" in caplog.text
    assert ProcessRef.of(stranger.pid).cmdline == ["sleep", "300"]


def test_a_process_that_execs_another_program_is_a_stranger(tmp_path: Path) -> None:
    ours = process.start(["-c", "import os, time; time.sleep(0.3); os.execvp('sleep', ['sleep', '300'])"],
                         tmp_path / "p.log")
    try:
        deadline = time.monotonic() + 10
        while ours.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        now = ProcessRef.of(ours.pid)
        assert now is not None and now.cmdline == ["sleep", "300"] and now.start_ticks == ours.start_ticks
        assert ours.liveness() is Liveness.STRANGER
    finally:
        os.kill(ours.pid, 9)


def test_a_process_exiting_without_its_command_line_yet_is_gone(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    # a killed process releases its memory (and /proc/<pid>/cmdline reads empty) before it becomes a zombie
    ref = process.start(["-c", "import time; time.sleep(300)"], tmp_path / "p.log")
    try:
        exiting = ref.model_copy(update={"cmdline": []})
        monkeypatch.setattr(ProcessRef, "of", classmethod(lambda cls, pid: exiting))
        assert ref.liveness() is Liveness.GONE
    finally:
        monkeypatch.undo()
        process.stop(ref)
