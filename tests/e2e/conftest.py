"""End-to-end fixtures: one real `slmops up` platform for the session (see platform_harness)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform_harness import Platform, none_running, stable_port

PORTS = {name: stable_port() for name in ("plat-a", "plat-r", "plat-ap")}


def bindings() -> list[dict]:
    """plat-a and plat-r follow champion on their own ports; plat-ap needs approval."""
    return [{"model": "plat-a", "alias": "champion", "target": {"target": "local", "port": PORTS["plat-a"]}},
            {"model": "plat-r", "alias": "champion", "target": {"target": "local", "port": PORTS["plat-r"]}},
            {"model": "plat-ap", "alias": "champion", "target": {"target": "local", "port": PORTS["plat-ap"]},
             "approval": "required", "approval_timeout_s": 600}]


FLEET = {"name": "plat-f", "model": "plat-f", "alias": "champion", "group": {"ring": "e2e"},
         "policy": {"canary": 1, "waves": [100], "max_concurrent": 2, "poll_s": 1, "offline_after_s": 5}}


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[Platform]:
    """`slmops up` on sqlite in a fresh SLMOPS_HOME, with three tiny models bound to local targets and one to a
    device fleet, registered (versions 1–3)."""
    plat = Platform(tmp_path_factory.mktemp("platform-home"), bindings(), fleets=[FLEET])
    state = plat.up()
    try:
        for name in [*PORTS, FLEET["model"]]:
            plat.register(name, tiny_onnx, versions=3)
        yield plat
    finally:
        plat.down()
        assert none_running(state), "slmops down left a process of the platform running"
