"""A promotion rolls out to a device fleet through the platform's own path: MLflow's webhook → the receiver → the
``slmops.alias.set`` event → the ``fleet-rollout`` flow, whose devices pull from the platform's fleet controller.

Three devices enroll with a token from ``slmops fleet token``: one real (our serving runtime in a real process,
loading the version's real int4 folder) and two simulated runtimes, all driven by the real agent over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path

import httpx

from infra.fleet.agent import Agent, enroll
from infra.fleet.models import DeviceSpec
from infra.fleet.runtimes import LocalServerRuntime, Profile, SimRuntime, free_memory_mb, hardware_class
from tests.e2e.conftest import FLEET
from tests.e2e.platform_harness import wait_for


def test_an_alias_move_rolls_out_to_the_fleet(platform, tmp_path: Path) -> None:
    token = platform.cli("fleet", "token", "--label", "ring=e2e", "--uses", "3").stdout.strip()
    url = platform.state.fleet_url
    stop = threading.Event()
    agents: list[Agent] = []
    real = LocalServerRuntime(tmp_path / "real")

    async def devices() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for i in range(3):
                spec = DeviceSpec(hw_class=hardware_class() if i == 0 else "cpu-avx2", runtime="local",
                                  memory_mb=free_memory_mb() if i == 0 else 4096, disk_mb=1024)
                _, device_token = await enroll(client, token, spec, f"e2e-{i}")
                runtime = real if i == 0 else SimRuntime(Profile("cpu-avx2", 4096, 50, 100, 0.05), None,
                                                         random.Random(i))
                agent = Agent(client, device_token, runtime, tmp_path / f"e2e-{i}", 1024)
                if i:
                    runtime.clock = agent.clock
                agents.append(agent)
            await asyncio.gather(*(a.run(stop.is_set) for a in agents))

    thread = threading.Thread(target=lambda: asyncio.run(devices()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(agents) == 3, 60, "three devices enrolled")
        runs_before = len(platform.flow_runs("fleet-rollout"))
        platform.mlflow().set_registered_model_alias(FLEET["model"], "champion", "2")
        wait_for(lambda: len(platform.flow_runs("fleet-rollout")) > runs_before and
                 platform.flow_runs("fleet-rollout")[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED"), 300,
                 "the fleet rollout to finish")
        assert platform.flow_runs("fleet-rollout")[0]["state_type"] == "COMPLETED"
        status = json.loads(platform.cli("fleet", "status", FLEET["name"], "--json").stdout)[0]
        assert status["state"] == "done" and status["version"] == "2", status
        assert sum(c["updated"] for c in status["classes"].values()) == 3 and status["failures"] == []
        assert all(a.running.version == "2" and a.running.kind == "onnx-int4" for a in agents)
        answer = httpx.post(f"{real.current.url}/v1/chat/completions", timeout=60, json={
            "model": FLEET["model"], "max_tokens": 8, "messages": [{"role": "user", "content": "Reverse: a b"}]})
        assert answer.status_code == 200 and answer.json()["model"] == FLEET["model"]
        artifacts = platform.prefect("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"fleet-{FLEET['name']}"]}}, "sort": "CREATED_DESC"}).json()
        assert artifacts and f"Fleet {FLEET['name']}" in artifacts[0]["data"]
        avx2 = 2 + (hardware_class() == "cpu-avx2")  # the real device is in its own machine's class
        assert "done" in artifacts[0]["data"] and f"| cpu-avx2 | {avx2} | {avx2} |" in artifacts[0]["data"]
    finally:
        stop.set()
        thread.join(120)
        real.close()
