"""A warm start for flow runs: one process imports Prefect and the flows once, then forks a flow-run process per run.

Prefect's process worker (and ``flow.serve``) start every flow run in a fresh interpreter, which spends seconds
importing Prefect, MLflow and onnxruntime before the flow's first line. For the flows that must react fast (the
redeploy that follows an alias move), ``slmops up`` starts this server and gives their deployments the worker
command ``python -I -S infra/platform/starter_client.py``: a stdlib-only client that hands the worker's
environment, working directory and stdin/stdout/stderr to this server over a Unix socket. The server forks; the
child takes those, refreshes Prefect's settings from the new environment and runs ``python -m prefect.engine``'s
main, so the worker still supervises the run (output, exit code, cancellation through the client) as it does a
plain process. The server itself never starts a thread or a Prefect client, so forking it is safe.

``python -m infra.platform.starter --socket PATH [--preload MODULE …]``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib
import json
import logging
import os
import runpy
import signal
import socket
import struct
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from tasks.errors import SlmopsError

log = logging.getLogger("slmops.starter")
HEADER = struct.Struct("!I")
ENGINE = "prefect.engine"
EMPTY = "connected and sent nothing"
PRELOAD = ("prefect.engine", "prefect.flow_engine", "flows.redeploy", "flows.aliases", "flows.deploy")


def socket_path(home: Path) -> Path:
    """Where ``slmops up`` puts the starter's socket: in the home, or (a Unix socket path holds at most 107
    bytes) in a private ``slmops-<uid>`` directory of the temp dir named after the home."""
    path = Path(home).resolve() / "platform" / "starter.sock"
    if len(os.fsencode(path)) <= 100:
        return path
    private = Path(tempfile.gettempdir()) / f"slmops-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    if private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
        raise SlmopsError(f"{private} is not a private directory of this user")
    return private / f"starter-{hashlib.sha256(os.fsencode(path)).hexdigest()[:16]}.sock"


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The client's request (``env``, ``cwd``) and its stdin/stdout/stderr descriptors."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if not data:
        raise ConnectionError(EMPTY)
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        more = conn.recv(65536)
        if not more:
            for fd in fds:
                os.close(fd)
            raise ConnectionError("the client went away mid-request")
        data += more
    return json.loads(data[HEADER.size:HEADER.size + HEADER.unpack_from(data)[0]]), fds


def _run_child(conn: socket.socket, request: dict, fds: list[int], module: str) -> None:
    """In the forked child: become the client's flow-run process and run ``module`` as ``__main__``."""
    outcome = {"exit": 1}

    def report() -> None:  # registered first, so it runs last: after Prefect drained its logs and events
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(outcome).encode() + b"\n")

    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")  # first: every later failure is reported
    atexit.register(report)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [module]
    if "prefect" in sys.modules:  # the settings were read from the server's environment at import
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    sys.modules.pop(module, None)  # runs afresh as __main__ (its imports are warm)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        outcome["exit"] = 0
    except SystemExit as exc:
        outcome["exit"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    sys.exit(outcome["exit"])


def serve(path: Path, preload: tuple[str, ...] = PRELOAD, module: str = ENGINE) -> None:
    """Import ``preload``, then fork a ``module`` run for every connection on the Unix socket ``path``."""
    for name in preload:
        importlib.import_module(name)
    if threading.active_count() > 1:
        raise SystemExit(f"error: importing {preload} started threads ({threading.enumerate()}); forking this "
                         "process would not be safe")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is 0600 from creation: only this user may start runs
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(64)
    me = os.getpid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("ready on %s (preloaded %s)", path, ", ".join(preload))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        while True:
            conn, _ = server.accept()
            conn.settimeout(5)
            try:
                request, fds = _read_request(conn)  # a health probe connects and sends nothing: no fork
            except (OSError, ValueError, KeyError) as exc:
                if not isinstance(exc, ConnectionError) or str(exc) != EMPTY:
                    log.warning("dropped a malformed request: %r", exc)
                conn.close()
                continue
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:
                server.close()
                for sig in (signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                _run_child(conn, request, fds, module)
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        if os.getpid() == me:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m infra.platform.starter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on (created 0600).")
    parser.add_argument("--preload", nargs="*", default=list(PRELOAD), help="Modules to import before forking.")
    parser.add_argument("--module", default=ENGINE, help="Module each forked run executes as __main__.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.socket, tuple(args.preload), args.module)


if __name__ == "__main__":
    main()
