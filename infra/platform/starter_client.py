"""The worker's command for warm-started flow runs: hand this process's run to the starter server and wait for it.

Run as ``python -I -S infra/platform/starter_client.py`` (standard library only, so it starts in milliseconds).
Sends the environment (with ``PREFECT__FLOW_RUN_ID``), the working directory and stdin/stdout/stderr to the
starter's socket (``$SLMOPS_STARTER_SOCKET``, set by ``slmops up`` for the worker), forwards SIGTERM/SIGINT
to the forked run and exits with its exit code. When no starter answers, it becomes ``python -m prefect.engine``
itself (a cold start), so a run is never lost to a missing starter.
"""

import contextlib
import json
import os
import signal
import socket
import struct
import sys

ENGINE = [sys.executable, "-m", "prefect.engine"]


def _cold_start(why: str) -> None:
    print(f"slmops starter: {why}; starting the flow run in a fresh interpreter", file=sys.stderr, flush=True)
    os.execv(ENGINE[0], ENGINE + sys.argv[1:])


def main() -> None:
    """Run this flow run in a process forked by the starter (or cold, when there is none)."""
    path = os.environ.get("SLMOPS_STARTER_SOCKET")
    if not path:
        _cold_start("SLMOPS_STARTER_SOCKET is not set")
    run: dict[str, int] = {}  # the forked run's pid, once the starter names it
    pending: list[int] = []  # signals that came before it did (the run may print before we read its pid)

    def forward(signum: int, _frame: object) -> None:
        if "pid" not in run:
            pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(run["pid"], signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [0, 1, 2])
    except OSError as exc:
        if pending:  # cancelled before anything ran
            sys.exit(128 + pending[0])
        _cold_start(f"no starter at {path} ({exc.strerror or exc})")
    replies = conn.makefile("rb")
    first = replies.readline()
    if not first:  # the starter died before forking: nothing ran yet
        if pending:
            sys.exit(128 + pending[0])
        _cold_start(f"the starter at {path} closed the connection")
    run["pid"] = json.loads(first)["pid"]
    for signum in pending:
        forward(signum, None)
    last = replies.readline()
    sys.exit(json.loads(last)["exit"] if last else 1)  # no report: the run was killed


if __name__ == "__main__":
    main()
