"""The device agent against the controller's real app: downloads resume after a cut connection (over a real
socket) and are fetched anew after a digest mismatch; a variant that does not fit is refused before any byte is
downloaded; an update runs golden prompts and a latency probe before switching, and keeps the previous version
on disk so a rollback downloads nothing."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from infra import process
from infra.fleet.agent import Agent, RealClock, enroll
from infra.fleet.controller import Controller
from infra.fleet.models import Desired, DeviceSpec, GoldenPrompt, Release, Variant
from infra.fleet.runtimes import Profile, SimRuntime
from infra.fleet.server import create_fleet_app


class Fleet:
    """A controller on sqlite with its artifact folder, and what the artifact server sent."""

    def __init__(self, tmp_path: Path, fault=None):
        self.ctl = Controller(f"sqlite:///{tmp_path / 'state.db'}")
        self.artifacts = tmp_path / "artifacts"
        self.artifacts.mkdir()
        self.sent: list[tuple[str, int, int]] = []
        self.app = create_fleet_app(self.ctl, self.artifacts, fault=fault,
                                    on_download=lambda dev, sha, start, n: self.sent.append((sha, start, n)))

    def variant(self, kind: str, data: bytes, memory_mb: int = 100) -> Variant:
        sha = hashlib.sha256(data).hexdigest()
        (self.artifacts / sha).write_bytes(data)
        return Variant(kind=kind, digest=sha, size_bytes=len(data), memory_bytes=memory_mb * 2**20,
                       url=f"/v1/artifacts/{sha}")


async def agent_for(fleet: Fleet, client: httpx.AsyncClient, home: Path, runtime=None) -> Agent:
    token = fleet.ctl.create_token({"ring": "prod"})
    spec = DeviceSpec(hw_class="cpu-avx2", runtime="local", memory_mb=1024, disk_mb=64)
    _, device_token = await enroll(client, token, spec)
    runtime = runtime or SimRuntime(Profile("cpu-avx2", 1024, 5.0, 500.0, 0.01), RealClock(), random.Random(0))
    return Agent(client, device_token, runtime, home, disk_mb=64)


def test_a_cut_download_resumes_and_a_corrupt_one_is_fetched_again(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    faults = iter([("cut", 100_000), ("corrupt", 250_000), None])
    fleet = Fleet(tmp_path, fault=lambda dev, sha, offset: next(faults))
    variant = fleet.variant("onnx-int4", data)
    port = process.free_port()
    server = uvicorn.Server(uvicorn.Config(fleet.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)

        async def go() -> Agent:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                agent = await agent_for(fleet, client, tmp_path / "device")
                agent.clock.sleep = lambda s: asyncio.sleep(0)  # no back-off wait in the test
                path = await agent.download(variant)
                assert path.read_bytes() == data
                return agent

        agent = asyncio.run(go())
    finally:
        server.should_exit = True
        thread.join(10)
    assert [(start, n) for _, start, n in fleet.sent] == [(0, 100_000), (100_000, 200_000), (0, 300_000)]
    assert agent.stats.resumed == 1 and agent.stats.digest_mismatches == 1 and agent.stats.verified == [variant.digest]
    assert not list((tmp_path / "device").glob("*.part"))


def run_with_client(fleet: Fleet, body):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fleet.app), base_url="http://fleet") as c:
            return await body(c)
    return asyncio.run(go())


def releases(fleet: Fleet, big_mb: int = 100) -> tuple[Release, Release]:
    golden = [GoldenPrompt(prompt="What is the capital of France?", expect="Paris")]
    v1 = Release(model="m", version="1", variants=[fleet.variant("onnx-int4", b"one" * 1000)], golden=golden)
    v2 = Release(model="m", version="2", variants=[fleet.variant("onnx-int4", b"two" * 1000, big_mb)],
                 golden=golden)
    return v1, v2


def test_a_variant_that_does_not_fit_is_refused_before_any_download(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    _, v2 = releases(fleet, big_mb=4096)

    async def body(client):
        agent = await agent_for(fleet, client, tmp_path / "device")
        return await agent.apply(Desired(rollout_id=1, release=v2, variant=v2.variants[0]))

    report = run_with_client(fleet, body)
    assert report.outcome == "failed" and report.failure == "unfit" and "MB of memory" in report.reason
    assert fleet.sent == []


@pytest.mark.parametrize(("fault", "failure"), [(None, None), ("bad", "golden"), ("slow", "latency")])
def test_an_update_is_checked_before_the_switch_and_rolls_back_from_disk(tmp_path: Path, fault: str | None,
                                                                         failure: str | None) -> None:
    fleet = Fleet(tmp_path)
    v1, v2 = releases(fleet)

    async def body(client):


        runtime = SimRuntime(Profile("cpu-avx2", 1024, 50.0, 100.0, 0.01), RealClock(), random.Random(0),
                             "2" if fault else None, fault)
        agent = await agent_for(fleet, client, tmp_path / "device", runtime)
        first = await agent.apply(Desired(rollout_id=1, release=v1, variant=v1.variants[0]))
        second = await agent.apply(Desired(rollout_id=1, release=v2, variant=v2.variants[0]))
        return agent, first, second

    agent, first, second = run_with_client(fleet, body)
    assert first.outcome == "ok" and first.running.version == "1"
    if failure is None:
        assert second.outcome == "ok" and second.running.version == "2" and second.loaded_new
        assert set(agent.on_disk()) == {v1.variants[0].digest, v2.variants[0].digest}  # the previous one is kept
        downloads = len(fleet.sent)
        back = run_with_client(fleet, lambda c: agent.apply(Desired(rollout_id=1, release=v1, rollback=True,
                                                                    variant=v1.variants[0])))
        assert back.outcome == "rolled-back" and back.running.version == "1" and not back.loaded_new
        assert len(fleet.sent) == downloads  # from disk: nothing downloaded
        # a rollout (not a rollback) to a version kept on disk is checked like any other, without a download
        again = run_with_client(fleet, lambda c: agent.apply(Desired(rollout_id=2, release=v2,
                                                                     variant=v2.variants[0])))
        assert again.outcome == "ok" and again.loaded_new and len(fleet.sent) == downloads
    else:
        assert second.outcome == "failed" and second.failure == failure and second.loaded_new
        assert agent.running.version == "1"  # still serving the old version


def test_a_restarted_agent_adopts_its_server_or_serves_again_from_disk(tmp_path: Path, tiny_onnx: Path) -> None:
    """The model server outlives its agent (a real `python -m infra.serving` process): the next agent adopts it,
    and after a reboot (server gone) serves the version the device ran again from its disk, before any poll."""
    from infra.fleet.runtimes import LocalServerRuntime, pack_served_folder

    fleet = Fleet(tmp_path)
    packed = pack_served_folder(tiny_onnx, tmp_path / "v1.tar", "1")
    v1 = Release(model="tiny-slm", version="1", variants=[fleet.variant("onnx-int4", packed.read_bytes())])
    home = tmp_path / "device"

    async def first(client):
        agent = await agent_for(fleet, client, home, LocalServerRuntime(home))
        return await agent.apply(Desired(rollout_id=1, release=v1, variant=v1.variants[0])), agent.token

    report, token = run_with_client(fleet, first)
    assert report.outcome == "ok", report.reason
    adopted = LocalServerRuntime(home)  # a new agent process
    try:
        assert adopted.current is not None and adopted.current.ref.liveness() is process.Liveness.RUNNING
        process.stop(adopted.current.ref)  # the machine rebooted: nothing serves
        fresh = LocalServerRuntime(home)
        assert fresh.current is None
        agent = Agent(httpx.AsyncClient(), token, fresh, home, disk_mb=64)
        asyncio.run(agent.restore())
        assert fresh.current is not None and fresh.current.release.version == "1"
        assert httpx.get(f"{fresh.current.url}/v1/models", timeout=10).json()["data"][0]["version"] == "1"
    finally:
        for runtime in (adopted, locals().get("fresh")):
            if runtime is not None:
                runtime.close()
