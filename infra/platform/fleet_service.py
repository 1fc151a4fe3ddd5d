"""``python -m infra.platform.fleet_service``: the fleet controller's API on the state database (``slmops up``)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from infra.fleet.controller import Controller, matches
from infra.fleet.releases import artifacts_dir
from infra.fleet.server import Egress, create_fleet_app
from infra.platform.bindings import fleet_bindings
from infra.targets.store import shown_url, state_database
from tasks.errors import SlmopsError
from tasks.settings import get_settings


class FleetPolls:
    """How often an idle device polls: the shortest ``policy.poll_s`` of the fleets whose group it is in (the
    bindings file, read again when it changes), else 60 s."""

    def __init__(self, bindings: Path):
        self.bindings, self.mtime, self.fleets = Path(bindings), None, []

    def __call__(self, labels: dict[str, str]) -> float:
        mtime = self.bindings.stat().st_mtime if self.bindings.is_file() else None
        if mtime != self.mtime:
            with contextlib.suppress(SlmopsError):  # a bad edit: keep the fleets read before (flows report it)
                self.fleets = fleet_bindings(self.bindings)
            self.mtime = mtime
        return min((f.policy.poll_s for f in self.fleets if matches(f.group, labels)), default=60.0)


def serve(root: Path, host: str, port: int, egress_bytes_per_s: float | None = None) -> None:
    """Serve enroll/poll/report and the artifacts until stopped."""
    import uvicorn

    ctl = Controller(state_database(root), idle_poll_s=FleetPolls(get_settings().bindings))
    app = create_fleet_app(ctl, artifacts_dir(root), Egress(egress_bytes_per_s, ctl.clock))
    print(f"fleet controller on http://{host}:{port} (state {shown_url(str(ctl.engine.url))}, artifacts "
          f"{artifacts_dir(root)})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.platform.fleet_service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--egress-mb-s", type=float, help="Cap on all downloads together, MB/s.")
    args = parser.parse_args(argv)
    serve(get_settings().root, args.host, args.port, args.egress_mb_s * 1e6 if args.egress_mb_s else None)


if __name__ == "__main__":
    main()
